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

:meth:`TPGM.fit` is the post-hoc variant: after an ordinary fine-tune, many radius updates
between W0 and the finished weights, then one projection (with ``norm="frob"``, a learned
per-tensor WiSE-FT: ``W0 + min(1, g / ||D||) D``).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
import contextlib
from typing import Literal

import torch
from torch import nn
import torch.nn.functional as F

from tether.errors import ConfigError
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


class TPGM(BaseProjection):
    """Projection onto balls whose radii are learned on held-out batches.

    Args:
        model: the network; its current weights are W0.
        constrained: ``(parameter, layout)`` pairs (:func:`~tether.finetune.regularizers.
            _ftp.tether_layouts`, or every parameter but the head with ``rows`` / ``whole``).
        heldout: returns the next held-out batch ``(inputs, labels)``, inputs ready for the
            model and on its device.
        norm: ``mars`` (l1 rows; a 1-D tensor is one row) or ``frob`` (whole tensors, l2).
        every: update the radii every this many steps (``proj_freq``).
        iters: radius updates per update step.
        radius_lr: the radii's Adam learning rate (``proj_lr``).
        init: ``tight`` (the reference) or ``loose``.
        autocast: the context the held-out forward runs in (mixed precision on CUDA).
        multipliers: one :data:`~._rowset.Multiplier` or ``None`` per constrained tensor.
    """

    def __init__(
        self,
        model: nn.Module,
        constrained: Sequence[tuple[torch.Tensor, Layout]],
        *,
        heldout: Callable[[], Batch],
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
        self.model = model
        self.heldout = heldout
        self.norm = norm
        self.every, self.iters, self.init = every, iters, init
        self.autocast = autocast
        names = {id(p): name for name, p in model.named_parameters()}
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

    def _loss_gradient(self, tilde: list[torch.Tensor]) -> list[torch.Tensor]:
        """``dL/dW~`` per block, from one held-out batch in eval mode."""
        leaves = [t.detach().requires_grad_() for t in tilde]
        inputs, labels = self.heldout()
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
