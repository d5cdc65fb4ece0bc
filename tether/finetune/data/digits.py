"""The built-in offline transfer task, made from scikit-learn's handwritten digits.

scikit-learn ships the 1797 8x8 images (grey levels 0..16) of the UCI optical digits set
(Alpaydin & Kaynak, 1998), so this task needs no download. A source network is pretrained on
``source_classes`` (:func:`tether.finetune.models.digits_cnn.pretrained_source_checkpoint`); the
target task is few-shot classification of ``target_classes``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from tether.errors import ConfigError
from tether.finetune.data.config import DataConfig
from tether.finetune.data.types import Split
from tether.finetune.data.types import TaskData
from tether.jsondata import json_digest


FORMAT_VERSION = 1


@functools.lru_cache(maxsize=4)
def digits_images(image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits at ``image_size`` as uint8 RGB, and their int64 labels 0..9.

    Each 8x8 image ``x`` (0..16) becomes ``round(255 * clamp(up(x / 16), 0, 1))`` where ``up`` is
    bilinear interpolation (``align_corners=False``, antialiased when shrinking), replicated to
    three channels. The tensors are shared between calls: index them, never write into them.

    Returns:
        ``(images [1797, 3, S, S] uint8, labels [1797] int64)``.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    grey = torch.from_numpy(bunch.images).to(torch.float32).unsqueeze(1) / 16.0
    grey = F.interpolate(
        grey,
        size=(image_size, image_size),
        mode="bilinear",
        align_corners=False,
        antialias=image_size < grey.shape[-1],
    )
    images = (grey.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    labels = torch.from_numpy(bunch.target).to(torch.int64)
    return images.expand(-1, 3, -1, -1).contiguous(), labels


def digits_source_split(cfg: DataConfig) -> Split:
    """Every image of ``cfg.source_classes``, labels remapped to ``0..k-1`` in that order."""
    images, labels = digits_images(cfg.image_size)
    return _remapped(
        images, labels, cfg.source_classes, torch.isin(labels, _t(cfg.source_classes))
    )


def load_digits_task(cfg: DataConfig) -> TaskData:
    """The few-shot digits transfer task.

    Per target class (in ``cfg.target_classes`` order, one ``torch.Generator`` seeded with
    ``cfg.seed``), the class's images are shuffled: the first ``shots`` go to train, the next
    ``val_shots`` to val and all the others to test. Labels are remapped to ``0..m-1`` in
    ``target_classes`` order; class ``i`` is named ``str(target_classes[i])``.

    Raises:
        ConfigError: (kind ``data``) a target class with fewer than ``shots + val_shots + 1``
            images.

    Example:
        >>> task = load_digits_task(DataConfig(shots=5, val_shots=5))
        >>> len(task.train), task.classes
        (25, ('5', '6', '7', '8', '9'))
    """
    images, labels = digits_images(cfg.image_size)
    generator = torch.Generator().manual_seed(cfg.seed)
    masks = {s: torch.zeros_like(labels, dtype=torch.bool) for s in ("train", "val", "test")}
    for c in cfg.target_classes:
        members = torch.nonzero(labels == c).flatten()
        n = members.numel()
        if n < cfg.shots + cfg.val_shots + 1:
            raise ConfigError(
                f"data.shots + data.val_shots = {cfg.shots + cfg.val_shots} leaves no test "
                f"images for digit {c}, which has {n} images",
                kind="data",
            )
        shuffled = members[torch.randperm(n, generator=generator)]
        masks["train"][shuffled[: cfg.shots]] = True
        masks["val"][shuffled[cfg.shots : cfg.shots + cfg.val_shots]] = True
        masks["test"][shuffled[cfg.shots + cfg.val_shots :]] = True
    splits = {s: _remapped(images, labels, cfg.target_classes, m) for s, m in masks.items()}
    payload = {
        "version": FORMAT_VERSION,
        "kind": "digits",
        "image_size": cfg.image_size,
        "source_classes": list(cfg.source_classes),
        "target_classes": list(cfg.target_classes),
        "shots": cfg.shots,
        "val_shots": cfg.val_shots,
        "seed": cfg.seed,
    }
    return TaskData(
        name="digits",
        classes=tuple(str(c) for c in cfg.target_classes),
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        fingerprint=json_digest(payload),
        source=digits_source_split(cfg),
    )


def _t(classes: tuple[int, ...]) -> torch.Tensor:
    return torch.tensor(classes, dtype=torch.int64)


def _remapped(
    images: torch.Tensor, labels: torch.Tensor, classes: tuple[int, ...], mask: torch.Tensor
) -> Split:
    """The images where ``mask`` holds, in dataset order, with digit ``classes[i]`` -> ``i``."""
    lookup = torch.full((10,), -1, dtype=torch.int64)
    lookup[_t(classes)] = torch.arange(len(classes))
    return Split(images=images[mask].contiguous(), labels=lookup[labels[mask]])
