"""The in-memory form of a task: decoded uint8 images and integer labels per split."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Split:
    """One split of a task, fully decoded.

    Attributes:
        images: uint8 ``[N, 3, H, W]``, CPU, contiguous.
        labels: int64 ``[N]``, the labels to train or evaluate on; on a train split with injected
            label noise these are the noisy ones.
        clean_labels: int64 ``[N]``, the true labels when noise was injected, else ``None``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    clean_labels: torch.Tensor | None = None

    def __post_init__(self) -> None:
        """Check the shapes and dtypes that every consumer relies on."""
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"Split.images must be uint8 [N, C, H, W], got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        for name in ("labels", "clean_labels"):
            labels = getattr(self, name)
            if labels is None:
                continue
            if labels.dtype != torch.int64 or labels.shape != (self.images.shape[0],):
                raise ValueError(
                    f"Split.{name} must be int64 [{self.images.shape[0]}], got {labels.dtype} "
                    f"{tuple(labels.shape)}"
                )

    def __len__(self) -> int:
        """The number of images."""
        return int(self.images.shape[0])

    @property
    def true_labels(self) -> torch.Tensor:
        """The clean labels when noise was injected, else :attr:`labels`."""
        return self.labels if self.clean_labels is None else self.clean_labels


def subset(split: Split, index: torch.Tensor) -> Split:
    """The images (and labels) of ``split`` at ``index``, in that order."""
    clean = None if split.clean_labels is None else split.clean_labels[index]
    return Split(split.images[index].contiguous(), split.labels[index], clean)


def hold_out(split: Split, share: float, *, seed: int) -> tuple[Split, Split]:
    """Carve a random ``share`` of ``split`` out: ``(the rest, the held-out part)``.

    The held-out part gets ``round(share * len)`` images, at least one; the rest keeps its
    original order.

    Raises:
        ConfigError: the share would leave no image on either side.
    """
    from tether.errors import ConfigError

    held = max(1, round(share * len(split)))
    if held >= len(split):
        raise ConfigError(
            f"holding out {share:g} of {len(split)} training images leaves none to train on"
        )
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    chosen = torch.zeros(len(split), dtype=torch.bool)
    chosen[order[:held]] = True
    return subset(split, (~chosen).nonzero().flatten()), subset(split, chosen.nonzero().flatten())


def concat_splits(*splits: Split) -> Split:
    """Concatenate splits in order; ``clean_labels`` is kept if any split has noisy labels."""
    images = torch.cat([s.images for s in splits]).contiguous()
    labels = torch.cat([s.labels for s in splits])
    clean = None
    if any(s.clean_labels is not None for s in splits):
        clean = torch.cat([s.true_labels for s in splits])
    return Split(images=images, labels=labels, clean_labels=clean)


@dataclass(frozen=True)
class TaskData:
    """A target task ready to train on, plus (for ``digits``) the source data.

    Attributes:
        name: a short human name (``digits``, or the folder's name).
        classes: the target class names; label ``i`` is ``classes[i]``.
        train: the training split (labels possibly noisy).
        val: the validation split (clean).
        test: the test split (clean).
        fingerprint: a stable sha256 hex digest of everything that decides the data (the
            config fields that change images or labels, and the file list with sizes and mtimes);
            other components use it as a cache key. Augmentation and normalisation, applied per
            batch, are not part of it.
        source: ``digits`` only: the source-class images (labels ``0..len(source_classes)-1``)
            used to pretrain the source network; ``None`` otherwise.
    """

    name: str
    classes: tuple[str, ...]
    train: Split
    val: Split
    test: Split
    fingerprint: str
    source: Split | None = None

    @property
    def num_classes(self) -> int:
        """The number of target classes."""
        return len(self.classes)

    def train_val(self) -> Split:
        """Train and val concatenated: the paper's refit before testing (Gouk et al., 2021)."""
        return concat_splits(self.train, self.val)
