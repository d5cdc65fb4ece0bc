"""TPGM, Trainable Projected Gradient Method (Tian et al., CVPR 2023): radii from held-out data.

One radius ``g_p`` per constrained tensor, learned by gradient descent on the loss of a
held-out batch. Every ``every`` optimiser steps (the references: 1), ``iters`` times:

1. on first use ``g = min_r(n_r) / 2`` (``init="tight"``, the reference's) or ``max_r(n_r)``
   (``"loose"``: every row starts inside), with ``n`` the row norms of ``D = W - W0`` (l1
   rows for ``mars``, the whole tensor's l2 norm for ``frob``) plus 1e-8; then ``g`` is
   clipped to ``[1e-8, max_r n_r]``;
2. ``W~ = W0 + clamp(g / n, 0, 1) D`` is swapped into the model in place of ``W`` (no copy
   of the model: :func:`torch.func.functional_call`), the model runs in eval mode on a
   held-out batch, and the cross-entropy's gradient ``G = dL/dW~`` gives the radius's::

       dL/dg_p = sum over rows r of p with 0 < g/n_r < 1 of <G_r, D_r> / n_r

   (rows inside the ball do not depend on ``g``); one Adam step on the radii.

Then the real weights are projected with the updated radii; on other steps with the current
ones (none before the first update). The held-out batches must come from a split carved from
the training images: never the validation split a search selects on.

In a training loop of your own, :meth:`TPGM.attach` runs all of this after every
``optimizer.step()`` (a step a ``GradScaler`` skips counts for nothing); the held-out batches
are a function that returns the next one, or any iterable of ``(inputs, labels)`` (a
``DataLoader``, a list), passed over again and again. A DataParallel,
DistributedDataParallel or ``torch.compile`` wrapper is looked through: the held-out forward
runs on the inner model, on each process alone, so under DistributedDataParallel every
process must draw the same held-out batches (the same seed) to keep the same radii.

:meth:`TPGM.fit` is the post-hoc variant: after an ordinary fine-tune, many radius updates
between W0 and the finished weights, then one projection (with ``norm="frob"``, a learned
per-tensor WiSE-FT: ``W0 + min(1, g / ||D||) D``).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Sequence
import contextlib
from typing import Literal

import torch
from torch import nn
import torch.nn.functional as F

from tether.errors import ConfigError
from tether.finetune.layers import unwrap
from tether.finetune.regularizers._base import BaseProjection
from tether.finetune.regularizers._ftp import RadiusAdam
from tether.finetune.regularizers._rowset import EPS
from tether.finetune.regularizers._rowset import Layout
from tether.finetune.regularizers._rowset import Multiplier
from tether.finetune.regularizers._rowset import RowNorm
from tether.finetune.regularizers._rowset import RowSet
from tether.finetune.regularizers.config import Norm


Init = Literal["tight", "loose"]
INITS: tuple[Init, ...] = ("tight", "loose")
Batch = tuple[torch.Tensor, torch.Tensor]
HeldOut = Callable[[], Batch] | Iterable[Batch]
"""The held-out batches: a function that returns the next, or an iterable passed over again."""


def next_batch_function(heldout: HeldOut) -> Callable[[], Batch]:
    """``heldout`` as a function that returns the next batch, endlessly.

    A function is returned as it is; an iterable (a ``DataLoader``, a list) is passed over
    again and again, a fresh iterator each pass (a shuffling ``DataLoader`` reshuffles).

    Example:
        >>> batches = next_batch_function([(torch.zeros(1), None), (torch.ones(1), None)])
        >>> [float(batches()[0]) for _ in range(3)]
        [0.0, 1.0, 0.0]
    """
    if callable(heldout):
        return heldout
    iterator: Iterator[Batch] = iter(())

    def next_batch() -> Batch:
        nonlocal iterator
        for _ in range(2):
            try:
                return next(iterator)
            except StopIteration:
                iterator = iter(heldout)
        raise ConfigError(
            "TPGM's held-out batches ran out: pass a list, a DataLoader or a function, "
            "not a one-pass iterator or an empty one"
        )

    return next_batch


class TPGM(BaseProjection):
    """Projection onto balls whose radii are learned on held-out batches.

    Args:
        model: the network; its current weights are W0. A DataParallel,
            DistributedDataParallel or ``torch.compile`` wrapper is looked through.
        constrained: ``(parameter, layout)`` pairs (:func:`~tether.finetune.regularizers.
            _learned.constrained_tensors` gives them, or every parameter but the head with
            ``rows`` / ``whole``).
        heldout: held-out batches ``(inputs, labels)``, inputs ready for the model: a
            function that returns the next, or an iterable passed over again and again
            (:func:`next_batch_function`); moved to the device of the model's first
            parameter.
        norm: ``mars`` (l1 rows; a 1-D tensor is one row) or ``frob`` (whole tensors, l2).
        every: update the radii every this many steps (``proj_freq``).
        iters: radius updates per update step.
        radius_lr: the radii's Adam learning rate (``proj_lr``).
        init: ``tight`` (the reference) or ``loose``.
        autocast: the context the held-out forward runs in (mixed precision on CUDA).
        multipliers: one :data:`~._rowset.Multiplier` or ``None`` per constrained tensor.

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> heldout = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]  # or a DataLoader
        >>> tpgm = TPGM(model, [(model[0].weight, "rows")], heldout=heldout, every=2)
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> handle = tpgm.attach(optimizer)  # after every step; radii every 2nd
        >>> x, y = torch.randn(8, 4), torch.zeros(8, dtype=torch.long)
        >>> for _ in range(2):
        ...     optimizer.zero_grad()
        ...     F.cross_entropy(model(x), y).backward()
        ...     optimizer.step()
        >>> tpgm.updates, tuple(tpgm.radii.shape)
        (1, (1,))
    """

    def __init__(
        self,
        model: nn.Module,
        constrained: Sequence[tuple[torch.Tensor, Layout]],
        *,
        heldout: HeldOut,
        norm: Norm = "mars",
        every: int = 1,
        iters: int = 1,
        radius_lr: float = 1e-2,
        init: Init = "tight",
        autocast: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
        multipliers: Sequence[Multiplier | None] | None = None,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"TPGM's proj_freq must be an integer >= 1, got {every!r}")
        if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
            raise ConfigError(f"TPGM's iters must be an integer >= 1, got {iters!r}")
        if init not in INITS:
            raise ConfigError(f"TPGM's init must be one of {', '.join(INITS)}, got {init!r}")
        self.model = unwrap(model)
        self.heldout = next_batch_function(heldout)
        self.norm = norm
        self.every, self.iters, self.init = every, iters, init
        self.autocast = autocast
        names = {id(p): name for name, p in self.model.named_parameters()}
        self.names = [names[id(p)] for p, _ in constrained]
        layouts: list[Layout] = [
            "whole" if norm == "frob" else layout for _, layout in constrained
        ]
        self.rows = RowSet([p for p, _ in constrained], layouts, multipliers=multipliers)
        self.radius: RadiusAdam | None = None
        self.radius_lr = radius_lr
        self.steps = 0
        self.updates = 0

    @property
    def radii(self) -> torch.Tensor | None:
        """The current radius per constrained tensor (``None`` before the first update)."""
        return None if self.radius is None else self.radius.radii

    def _state(self) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        weights = self.rows.gather()
        offsets = self.rows.offsets(weights)
        ord_: RowNorm = "l1" if self.norm == "mars" else "l2"
        return weights, offsets, self.rows.row_norms(offsets, ord_)

    def _heldout_batch(self) -> Batch:
        """The next held-out batch, on the device of the model's first parameter."""
        inputs, labels = self.heldout()
        first = next(self.model.parameters(), None)
        if first is None:
            return inputs, labels
        return inputs.to(first.device), labels.to(first.device)

    def _loss_gradient(self, tilde: list[torch.Tensor]) -> list[torch.Tensor]:
        """``dL/dW~`` per block, from one held-out batch in eval mode."""
        leaves = [t.detach().requires_grad_() for t in tilde]
        inputs, labels = self._heldout_batch()
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.enable_grad(), self.autocast():
                params = self.rows.split(leaves, params=True)
                swapped = dict(zip(self.names, params, strict=True))
                logits = torch.func.functional_call(self.model, swapped, (inputs,), strict=False)
                loss = F.cross_entropy(logits.float(), labels)
            grads = torch.autograd.grad(loss, leaves)
        finally:
            self.model.train(was_training)
        return list(grads)

    def hypergradient(
        self, gradients: Sequence[torch.Tensor], offsets: Sequence[torch.Tensor],
        norms: Sequence[torch.Tensor], radii: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        """``dL/dg`` per tensor: rows strictly outside the ball contribute ``<G_r, D_r> / n_r``."""
        per_row = []
        for g, d, n, r in zip(gradients, offsets, norms, self.rows.expand(radii), strict=True):
            outside = (r / n) < 1
            per_row.append(torch.where(outside, (g * d).sum(dim=1) / n, torch.zeros_like(n)))
        return self.rows.tensor_sum(per_row)

    @torch.no_grad()
    def update_radii(self) -> None:
        """``iters`` radius updates from held-out batches (the weights are not changed)."""
        weights, offsets, norms = self._state()
        largest = self.rows.tensor_max(norms)
        if self.radius is None:
            start = self.rows.tensor_min(norms) / 2 if self.init == "tight" else largest
            self.radius = RadiusAdam(start, lr=self.radius_lr)
        for _ in range(self.iters):
            radii = torch.minimum(self.radius.radii.clamp(min=EPS), largest)
            self.radius.radii = radii
            tilde = self.rows.rescaled(weights, self.rows.scales(radii, norms))
            gradients = self._loss_gradient(tilde)
            self.updates += 1
            self.radius.step(self.hypergradient(gradients, offsets, norms, radii), t=self.updates)
        self.radius.radii = torch.minimum(self.radius.radii.clamp(min=EPS), largest)

    @torch.no_grad()
    def project_(self) -> None:
        """After an optimiser step: update the radii every ``every`` steps, then project."""
        self.steps += 1
        if self.steps % self.every == 0:
            self.update_radii()
        if self.radius is None:
            return
        weights, _, norms = self._state()
        self.rows.write_(self.rows.rescaled(weights, self.rows.scales(self.radius.radii, norms)))

    def fit(self, iterations: int) -> None:
        """Post-hoc: ``iterations`` radius updates on the current weights, then one projection."""
        if iterations < 1:
            raise ConfigError(f"post-hoc TPGM needs >= 1 iteration, got {iterations!r}")
        every, iters = self.every, self.iters
        self.every, self.iters = 1, iterations
        try:
            self.project_()
        finally:
            self.every, self.iters = every, iters

    def distances(self) -> dict[str, float]:
        """Largest distance per constrained tensor name, in this TPGM's norm."""
        _, _, norms = self._state()
        largest = self.rows.tensor_max(norms) - EPS
        return dict(zip(self.names, largest.tolist(), strict=True))
