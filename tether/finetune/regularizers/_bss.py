r"""BSS: Batch Spectral Shrinkage (Chen et al., "Catastrophic Forgetting Meets Negative
Transfer: Batch Spectral Shrinkage for Safe Transfer Learning", NeurIPS 2019).

The penalty shrinks the smallest singular values of the batch's feature matrix
:math:`F \in \mathbb R^{b \times d}` (the input of the new head, one row per image):

.. math::

    L_{bss}(F) = \eta \sum_{i=1}^{k} \sigma_{-i}^2(F),

where :math:`\sigma_{-1} \le \sigma_{-2} \le \dots` are the smallest of the
:math:`\min(b, d)` singular values. The paper's argument: the directions with small singular
values are the ones the source task did not need and fine-tuning fits to noise, so shrinking
them limits negative transfer. It is not a distance to the pretrained weights, and it is added
to standard fine-tuning (or to any other method). Defaults of the reference implementation
(tllib ``BatchSpectralShrinkage``, ``examples/.../bss.py``): ``k = 1``, ``eta = 0.001``.
"""

from __future__ import annotations

from collections.abc import Callable
import math
from typing import Any
import weakref

import torch
from torch import nn

from tether.errors import ConfigError
from tether.finetune.layers import unwrap
from tether.finetune.regularizers._base import BasePenalty


def spectral_shrinkage(features: torch.Tensor, k: int) -> torch.Tensor:
    """The sum of the ``k`` smallest squared singular values of ``features`` (float32).

    ``features`` is ``[b, ...]``, flattened to ``[b, d]``; it has ``min(b, d)`` singular
    values, and a ``k`` above that sums them all (the squared Frobenius norm).

    Example:
        >>> spectral_shrinkage(torch.diag(torch.tensor([3.0, 2.0, 1.0])), k=2)
        tensor(5.)
    """
    matrix = features.flatten(1).float()
    with torch.autocast(matrix.device.type, enabled=False):
        singular = torch.linalg.svdvals(matrix)  # descending
    return singular[-min(k, singular.numel()) :].square().sum()


def _capture(store: dict[str, torch.Tensor]) -> Callable[..., None]:
    def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
        if torch.is_grad_enabled() and args and isinstance(args[0], torch.Tensor):
            store["features"] = args[0]

    return hook


class BatchSpectralShrinkage(BasePenalty):
    """``eta * sum of the k smallest squared singular values`` of the head's input batch.

    A forward pre-hook on the head module keeps its input from the model's last forward
    under autograd (evaluation under ``torch.no_grad`` is ignored). The training loop calls
    ``model(inputs)`` and then ``penalty(inputs)``; the penalty uses, once, the features of
    that forward, so its gradient flows through the whole feature extractor. The singular
    values are computed in float32, outside autocast.

    The hook is removed by :meth:`remove` or when the penalty is garbage collected; it does
    not keep the penalty alive.

    Args:
        model: the network; a DataParallel, DistributedDataParallel or ``torch.compile``
            wrapper is looked through (``head`` names the inner model's module).
        head: dotted name of the new head module, whose input are the features.
        eta: the trade-off (``penalty.alpha`` in a recipe).
        k: how many of the smallest singular values to shrink; clamped to ``min(b, d)``.

    Raises:
        ConfigError: ``eta < 0``, ``k < 1``, or no module named ``head``.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
        >>> penalty = BatchSpectralShrinkage(model, head="1", eta=0.001, k=1)
        >>> x = torch.randn(8, 4)
        >>> loss = model(x).sum() + penalty(x)
    """

    def __init__(self, model: nn.Module, *, head: str, eta: float, k: int = 1) -> None:
        if isinstance(eta, bool) or not isinstance(eta, int | float) or not eta >= 0:
            raise ConfigError(f"penalty.alpha (BSS's eta) must be a number >= 0, got {eta!r}")
        if not math.isfinite(eta):
            raise ConfigError(f"penalty.alpha (BSS's eta) must be finite, got {eta!r}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"penalty.k must be an integer >= 1, got {k!r}")
        try:
            module = unwrap(model).get_submodule(head)
        except AttributeError:
            raise ConfigError(
                f"the model has no module named {head!r} to use as the head"
            ) from None
        self.eta = float(eta)
        self.k = k
        self._store: dict[str, torch.Tensor] = {}
        handle = module.register_forward_pre_hook(_capture(self._store))
        self._remove = weakref.finalize(self, handle.remove)

    def remove(self) -> None:
        """Detach the hook from the model (the penalty cannot be used afterwards)."""
        self._remove()
        self._store.clear()

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        features = self._store.pop("features", None)
        if features is None:
            raise RuntimeError(
                "BSS has no features: run model(inputs) with gradients enabled before "
                "penalty(inputs) on every batch (and do not call remove() before)"
            )
        if features.shape[0] != inputs.shape[0]:
            raise RuntimeError(
                f"BSS: the head saw a batch of {features.shape[0]} but the inputs hold "
                f"{inputs.shape[0]}; was the model run on these inputs?"
            )
        return self.eta * spectral_shrinkage(features, self.k)
