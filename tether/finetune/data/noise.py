"""Synthetic label noise for the train split (Li & Zhang, NeurIPS 2021, Sec. 5)."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Literal

import torch

from tether.finetune.data.types import Split
from tether.finetune.data.types import TaskData


NoiseKind = Literal["none", "symmetric", "pair"]


def inject_label_noise(
    labels: torch.Tensor,
    *,
    kind: NoiseKind | str,
    rate: float,
    num_classes: int,
    seed: int,
) -> torch.Tensor:
    """Return a noisy copy of ``labels``, deterministic for a seed.

    Exactly ``k = round(rate * n)`` indices are chosen uniformly without replacement (a seeded
    ``torch.Generator``, so the realised flip rate is ``k / n``, the requested rate up to
    rounding). Each chosen label ``y`` becomes

    - ``symmetric``: ``(y + u) mod C`` with ``u`` uniform on ``{1, ..., C-1}``, i.e. a label
      drawn uniformly from the *other* classes, so every chosen label really changes;
    - ``pair``: ``(y + 1) mod C``, each class flipped into the next one;
    - ``none``: unchanged (a copy of ``labels`` is returned).

    Args:
        labels: int64 ``[n]`` labels in ``0..num_classes-1``.
        kind: ``none``, ``symmetric`` or ``pair``.
        rate: the fraction of labels to flip, in ``[0, 1]``.
        num_classes: ``C``, at least 2.
        seed: the generator seed.

    Returns:
        An int64 tensor of the same shape and device as ``labels``.

    Raises:
        ValueError: an unknown kind, a rate outside ``[0, 1]``, fewer than 2 classes, or labels
            outside ``0..num_classes-1``.

    Example:
        >>> y = torch.arange(10) % 5
        >>> noisy = inject_label_noise(y, kind="pair", rate=0.3, num_classes=5, seed=0)
        >>> int((noisy != y).sum())
        3
    """
    if kind not in ("none", "symmetric", "pair"):
        raise ValueError(f"noise kind must be 'none', 'symmetric' or 'pair', got {kind!r}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise rate must be in [0, 1], got {rate!r}")
    if num_classes < 2:
        raise ValueError(f"label noise needs at least 2 classes, got {num_classes}")
    if labels.dtype != torch.int64 or labels.dim() != 1:
        raise ValueError(f"labels must be int64 [n], got {labels.dtype} {tuple(labels.shape)}")
    n = labels.numel()
    if n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must be in 0..{num_classes - 1}")
    noisy = labels.detach().cpu().clone()
    k = round(rate * n)
    if kind == "none" or k == 0:
        return noisy.to(labels.device)
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(n, generator=generator)[:k]
    if kind == "symmetric":
        shift = torch.randint(1, num_classes, (k,), generator=generator)
    else:
        shift = torch.ones(k, dtype=torch.int64)
    noisy[chosen] = (noisy[chosen] + shift) % num_classes
    return noisy.to(labels.device)


def apply_label_noise(
    task: TaskData, *, kind: NoiseKind | str, rate: float, seed: int
) -> TaskData:
    """Inject label noise into ``task.train`` only; val, test and source stay clean.

    The train split keeps the true labels in ``clean_labels``, and the fingerprint changes with
    the noise settings. ``kind="none"`` returns ``task`` unchanged.
    """
    if kind == "none":
        return task
    noisy = inject_label_noise(
        task.train.labels, kind=kind, rate=rate, num_classes=task.num_classes, seed=seed
    )
    train = Split(images=task.train.images, labels=noisy, clean_labels=task.train.labels)
    tag = f"{task.fingerprint}/noise={kind}/rate={rate!r}/seed={seed}"
    return dataclasses.replace(
        task, train=train, fingerprint=hashlib.sha256(tag.encode()).hexdigest()
    )
