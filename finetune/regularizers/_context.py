"""What a penalty may need to build itself: one object, the same for every penalty."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from finetune.layers import LayerGroups


@dataclass(frozen=True)
class PenaltyContext:
    """The run a penalty is built for. Penalties take what they need and ignore the rest.

    Args:
        model: the network with its new head, on its training device, weights = W0.
        head: dotted name of the new head module.
        groups: the model's layer groups.
        train_images: uint8 ``[N, 3, H, W]`` training images (CPU).
        train_labels: int64 ``[N]`` training labels.
        transform: turns a uint8 batch on the device into the network's float input
            (evaluation transform: no augmentation).
        device: the training device.
        cache_dir: where expensive, reusable results (DELTA's channel weights) are kept.
        cache_key: identifies the pretrained network and the data (hex digest); part of
            every cache key.
        seed: the run's seed.
    """

    model: nn.Module
    head: str
    groups: LayerGroups
    train_images: torch.Tensor
    train_labels: torch.Tensor
    transform: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device
    cache_dir: Path
    cache_key: str
    seed: int = 0
