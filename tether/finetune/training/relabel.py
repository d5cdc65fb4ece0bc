"""Self label-correction and sample reweighting for noisy labels (RSL).

Li & Zhang, "Improved Regularization and Robustness for Fine-tuning in Neural Networks",
NeurIPS 2021. Per mini-batch at epoch ``e`` (1-based), in this order:

1. **Correction** (``e >= correct_epoch``): with ``p = softmax(model(x))``, a stored label is
   overwritten by ``argmax_k p_k`` when ``max_k p_k > threshold`` and the two differ. The
   labels live in one tensor indexed by dataset index, so corrections accumulate across epochs,
   and the corrected label is already used in the same step's loss.
2. **Reweighting** (``e >= reweight_epoch``): with per-sample losses ``l_i = NLL_i``, the batch
   loss is ``sum_i w_i l_i`` where ``w = softmax(-l.detach() / T)`` over the batch, so
   low-loss (confident) samples count more. Before, or when off, it is the plain mean.
3. At the end of epoch ``e > reweight_epoch``: ``T <- max(0.5, exp(-0.1 (e - reweight_epoch)))
   * T0``, a decay to the floor ``T0 / 2`` about seven epochs after reweighting starts.

Both are off at ``start_epoch == 0``; then they leave the step exactly as plain fine-tuning
(the same :func:`torch.nn.functional.cross_entropy` call), so the loop calls them
unconditionally.

Example:
    >>> correction = LabelCorrection(start_epoch=1, threshold=0.9)
    >>> stored = torch.tensor([0, 1])
    >>> logits = torch.tensor([[0.0, 5.0], [0.0, 5.0]])
    >>> correction.correct_(stored, torch.tensor([0, 1]), logits, epoch=1)
    >>> stored.tolist()
    [1, 1]
"""

from __future__ import annotations

from dataclasses import dataclass
import math

import torch
import torch.nn.functional as F


TEMPERATURE_FLOOR = 0.5
"""The scheduled temperature never drops below this fraction of ``T0``."""

TEMPERATURE_DECAY = 0.1
"""The per-epoch rate of the temperature's exponential decay."""


@dataclass(frozen=True)
class LabelCorrection:
    """RSL self label-correction: confident predictions overwrite the stored labels.

    Args:
        start_epoch: the first (1-based) epoch that corrects; 0 turns correction off.
        threshold: a prediction corrects its label only if its probability is strictly above.
    """

    start_epoch: int = 0
    threshold: float = 0.9

    @property
    def enabled(self) -> bool:
        """Whether this run corrects labels at all."""
        return self.start_epoch > 0

    def active(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (1-based) corrects labels."""
        return self.enabled and epoch >= self.start_epoch

    @torch.no_grad()
    def correct_(
        self, labels: torch.Tensor, index: torch.Tensor, logits: torch.Tensor, *, epoch: int
    ) -> None:
        """Overwrite ``labels[index]`` in place where the batch's prediction is confident.

        Args:
            labels: the stored labels of the whole split, int64 ``[N]``, changed in place.
            index: the dataset indices of the batch, ``[B]``, on ``labels``' device.
            logits: the model's outputs for the batch, ``[B, C]``.
            epoch: the current epoch (1-based); nothing changes before ``start_epoch``.
        """
        if not self.active(epoch):
            return
        confidence, predicted = F.softmax(logits.float(), dim=1).max(dim=1)
        change = (confidence > self.threshold) & (predicted != labels[index])
        labels[index[change]] = predicted[change]

    def changed(self, labels: torch.Tensor, given: torch.Tensor) -> int | None:
        """How many stored ``labels`` differ from the ``given`` ones; ``None`` when off."""
        if not self.enabled:
            return None
        return int((labels.cpu() != given.cpu()).sum())


@dataclass(frozen=True)
class Reweighting:
    """RSL sample reweighting: a softmax over the negated losses weights each batch.

    Args:
        start_epoch: the first (1-based) epoch that reweights; 0 turns reweighting off.
        temperature: ``T0``, the temperature of the first reweighted epochs.
    """

    start_epoch: int = 0
    temperature: float = 1.0

    def temperature_at(self, epoch: int) -> float | None:
        """The temperature used in epoch ``epoch`` (1-based); ``None`` when not reweighting.

        The schedule updates T at the end of every epoch after ``start_epoch``, so epochs
        ``start_epoch`` and ``start_epoch + 1`` use ``T0`` and epoch ``e`` after them uses
        ``max(0.5, exp(-0.1 (e - 1 - start_epoch))) * T0``.
        """
        if self.start_epoch == 0 or epoch < self.start_epoch:
            return None
        decayed = math.exp(-TEMPERATURE_DECAY * max(0, epoch - 1 - self.start_epoch))
        return max(TEMPERATURE_FLOOR, decayed) * self.temperature

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, *, epoch: int) -> torch.Tensor:
        """The batch loss of epoch ``epoch``: the mean cross-entropy, or its reweighted sum."""
        temperature = self.temperature_at(epoch)
        if temperature is None:
            return F.cross_entropy(logits, labels)
        return weighted_loss(F.cross_entropy(logits, labels, reduction="none"), temperature)


def weighted_loss(losses: torch.Tensor, temperature: float) -> torch.Tensor:
    """``sum_i w_i l_i`` with ``w = softmax(-l / T)`` over the batch, ``w`` held constant.

    The weights see the losses detached: the gradient is ``sum_i w_i dl_i``, as in RSL.

    Example:
        >>> weighted_loss(torch.tensor([1.0, 1.0]), temperature=2.0)
        tensor(1.)
    """
    weights = F.softmax(-losses.detach() / temperature, dim=0)
    return (weights * losses).sum()


def relabel_summary(
    given: torch.Tensor, final: torch.Tensor, clean: torch.Tensor | None
) -> dict[str, int | float | None]:
    """What label correction did to a training split.

    Args:
        given: the labels the run was given (noisy when noise was injected), int64 ``[N]``.
        final: the stored labels after training, int64 ``[N]``.
        clean: the true labels, or ``None`` when no noise was injected.

    Returns:
        ``corrected``: how many final labels differ from the given ones;
        ``recovered``: the share of the corrupted labels (``given != clean``) that ended at the
        clean label; ``damaged``: the share of the correct labels (``given == clean``) that
        ended at a wrong one. Both shares are ``None`` without clean labels, or when their set
        is empty.

    Example:
        >>> given, clean = torch.tensor([0, 0, 1, 1]), torch.tensor([1, 0, 1, 1])
        >>> relabel_summary(given, torch.tensor([1, 0, 0, 1]), clean)
        {'corrected': 2, 'recovered': 1.0, 'damaged': 0.3333333333333333}
    """
    given, final = given.cpu(), final.cpu()
    summary: dict[str, int | float | None] = {
        "corrected": int((final != given).sum()),
        "recovered": None,
        "damaged": None,
    }
    if clean is None:
        return summary
    clean = clean.cpu()
    corrupted = given != clean
    summary["recovered"] = _share(final[corrupted] == clean[corrupted])
    summary["damaged"] = _share(final[~corrupted] != clean[~corrupted])
    return summary


def _share(hits: torch.Tensor) -> float | None:
    return float(hits.double().mean()) if hits.numel() else None
