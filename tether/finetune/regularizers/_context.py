"""What a penalty may need to build itself: one object, the same for every penalty."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tether.finetune.layers import LayerGroups


@dataclass(frozen=True)
class SourceTask:
    """The pretrained network on its own (source) task: what L2-SP-Fisher is measured on.

    Attributes:
        model: the pretrained network with its *original* classifier (the source head), on
            the CPU. Every parameter outside the head has the name and shape of the fine-tuned
            model's, so per-parameter statistics map onto the fine-tuned model.
        images: uint8 ``[N, 3, H, W]`` source-domain images (CPU); no labels are needed.
        transform: turns a uint8 batch on the device into the network's float input.
        fingerprint: identifies the network, the images and the transform (hex digest);
            part of every cache key computed from them.
    """

    model: nn.Module
    images: torch.Tensor
    transform: Callable[[torch.Tensor], torch.Tensor]
    fingerprint: str


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
        cache_dir: where expensive, reusable results (DELTA's channel weights, the Fisher
            information of L2-SP-Fisher) are kept.
        cache_key: identifies the pretrained network and the data (hex digest); part of
            every cache key.
        seed: the run's seed.
        source: loads the source task (:class:`SourceTask`) when called; ``None`` when the
            run has none. Only a penalty that needs it calls it, so the others pay nothing.
            It raises :class:`tether.errors.ConfigError` when the run's recipe does not say
            where the source images are.
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
    source: Callable[[], SourceTask] | None = None
