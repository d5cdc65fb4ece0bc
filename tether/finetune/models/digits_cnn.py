"""The source network of the built-in digits task, and its cached pretraining."""

from __future__ import annotations

from pathlib import Path
import sys
import time

import torch
from torch import nn
import torch.nn.functional as F

from tether.files import atomic_write
from tether.finetune._determinism import cache_threads
from tether.finetune._determinism import kernel_identity
from tether.finetune.data.config import DataConfig
from tether.finetune.data.digits import digits_source_split
from tether.jsondata import json_digest


FORMAT_VERSION = 2
SOURCE_SEED = 0
DEFAULT_WIDTHS = (32, 64, 128)


class DigitsCNN(nn.Module):
    """A small CNN for 16x16 digits: three conv blocks, global average pooling, a linear head.

    ``block1`` and ``block2`` are conv 3x3 (no bias) -> BatchNorm -> ReLU -> max-pool 2x2;
    ``block3`` is the same without pooling. ``forward`` is blocks -> ``avgpool`` ->
    ``flatten(x, 1)`` -> ``fc``, laid out like torchvision's ResNet so that the same head
    surgery applies (``avgpool`` -> ``nn.Identity`` and a wider ``fc`` gives a flatten head).

    Args:
        num_classes: outputs of ``fc``.
        widths: output channels of the three blocks.

    Example:
        >>> DigitsCNN(5)(torch.zeros(2, 3, 16, 16)).shape
        torch.Size([2, 5])
    """

    def __init__(self, num_classes: int, *, widths: tuple[int, int, int] = DEFAULT_WIDTHS) -> None:
        """Build the network with default PyTorch initialisation."""
        super().__init__()
        self.block1 = _block(3, widths[0], pool=True)
        self.block2 = _block(widths[0], widths[1], pool=True)
        self.block3 = _block(widths[1], widths[2], pool=False)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` for images ``[B, 3, H, W]``."""
        x = self.block3(self.block2(self.block1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _block(c_in: int, c_out: int, *, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def pretrained_source_checkpoint(
    cfg: DataConfig,
    *,
    cache_dir: Path,
    epochs: int = 10,
    widths: tuple[int, int, int] = DEFAULT_WIDTHS,
) -> Path:
    """The path of a :class:`DigitsCNN` state dict pretrained on the digits source classes.

    Trains on every image of ``cfg.source_classes`` (inputs ``uint8 / 255``, no normalisation)
    with Adam (lr 1e-3), batches of 64 and cross-entropy, on CPU, from the fixed seed 0 whatever
    ``cfg.seed`` is, so every fine-tuning seed starts from the same source network. It trains
    on one thread (:func:`~tether.finetune._determinism.cache_threads`), so the network is the
    same bit for bit whatever thread count the caller runs with. The caller's global RNG state
    and thread count are left untouched. The file is cached under
    ``cache_dir / "digits" / "source-<sha256>.pt"``, keyed by the source classes, image size,
    widths, epochs, seed and torch version, written atomically and reused by later calls and
    processes. It loads with ``torch.load(path, weights_only=True)`` into
    ``DigitsCNN(len(cfg.source_classes))``.

    Raises:
        ValueError: ``epochs < 1``.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    payload = {
        "version": FORMAT_VERSION,
        "source_classes": list(cfg.source_classes),
        "image_size": cfg.image_size,
        "widths": list(widths),
        "epochs": epochs,
        "seed": SOURCE_SEED,
        **kernel_identity(torch.device("cpu")),
    }
    key = json_digest(payload)
    path = Path(cache_dir) / "digits" / f"source-{key}.pt"
    if _loadable(path):
        return path
    with cache_threads():
        state = _pretrain(cfg, epochs=epochs, widths=widths)
    atomic_write(path, lambda handle: torch.save(state, handle))
    return path


def _loadable(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        torch.load(path, weights_only=True)
    except Exception as exc:  # a truncated file: train again and overwrite it
        print(f"ignoring unreadable source checkpoint {path}: {exc}", file=sys.stderr, flush=True)
        return False
    return True


def _pretrain(
    cfg: DataConfig, *, epochs: int, widths: tuple[int, int, int], batch_size: int = 64
) -> dict[str, torch.Tensor]:
    classes = _describe(cfg.source_classes)
    print(
        f"pretraining the digits source network on classes {classes} ({epochs} epochs) ...",
        file=sys.stderr,
        flush=True,
    )
    began = time.perf_counter()
    split = digits_source_split(cfg)
    x = split.images.to(torch.float32) / 255.0
    y = split.labels
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SOURCE_SEED)
        model = DigitsCNN(len(cfg.source_classes), widths=widths)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(split))
            for start in range(0, len(split), batch_size):
                batch = order[start : start + batch_size]
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(x[batch]), y[batch])
                torch.autograd.backward(loss)
                optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x).argmax(dim=1) == y).float().mean().item()
    print(
        f"source network: {100 * accuracy:.1f}% accuracy on its {len(split)} training images "
        f"({time.perf_counter() - began:.1f} s)",
        file=sys.stderr,
        flush=True,
    )
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _describe(classes: tuple[int, ...]) -> str:
    """``0-4`` for a contiguous increasing run, else ``0,2,7``."""
    if list(classes) == list(range(classes[0], classes[0] + len(classes))):
        return f"{classes[0]}-{classes[-1]}"
    return ",".join(str(c) for c in classes)
