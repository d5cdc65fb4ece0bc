"""FTP, Fast Trainable Projection (Tian et al., NeurIPS 2023): radii learned inside the optimiser.

One radius ``g_p`` per constrained tensor, updated every step from the previous step's
deviation, with no extra forward pass and no held-out data. At step ``t``, per tensor:

1. the base optimiser (Adam or SGD) steps: ``W' = W - d``;
2. the candidate deviation ``c_t = W' - W0`` and its row norms ``n_t`` (l1, plus 1e-8);
3. the radius: at ``t = 1``, ``g = first_radius`` (1e-8: the first step lands on W0);
   afterwards the hypergradient ``h = sum_r <grad_r, c_{t-1,r}> / n_{t-1,r}`` (every row,
   as the reference does), ``h <- k h`` when ``h > 0`` (``k`` in [0, 1]: 0 never lets a
   positive hypergradient shrink the ball), one Adam step on ``g`` (``radius_lr``, betas 0.9
   and 0.999, eps 1e-8, bias correction by the global step ``t``), then ``g`` clipped to
   ``[1e-8, max_r n_t]``;
4. ``W <- W0 + min(1, g / n_t) c_t`` per row.

Which tensors, by default as the reference: every parameter the optimiser holds except the
excluded ones (the new head, found by identity so that a ``module.`` prefix of a wrapped model
changes nothing), a tensor of two or more dimensions by output rows, a 1-D tensor (bias,
normalisation scale or shift) as one whole-tensor l1 row. ``constrained`` names the tensors
and layouts instead (:func:`~tether.finetune.regularizers._learned.constrained_tensors` gives
Tether's own convention). Excluded and free tensors take the plain step.

A parameter without a gradient on a step is not moved by the base optimiser; its radius and
radius state stay as they were, so it corrupts nothing.

FTP is an optimiser like any other in a loop of your own: it shares the base optimiser's
``param_groups`` and ``state``, so a learning-rate scheduler, ``GradScaler.step`` (and
``unscale_`` before gradient clipping; a step it skips for an inf changes neither weights nor
radii) and ``state_dict`` work on it; the parameters of a DataParallel,
DistributedDataParallel or compiled model are the inner model's, so pass them and exclude the
head by identity as for a bare model. The reference rule reads a stored tensor's rows: for a
model with transformers ``Conv1D`` layers (weights stored ``[in, out]``), pass
``constrained`` from :func:`~tether.finetune.regularizers._learned.constrained_tensors`, which
reads those by their columns (output units).
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from typing import Literal

import torch

from tether.errors import ConfigError
from tether.finetune.regularizers._rowset import EPS
from tether.finetune.regularizers._rowset import Layout
from tether.finetune.regularizers._rowset import Multiplier
from tether.finetune.regularizers._rowset import RowSet
from tether.finetune.regularizers._wrapped import WrappedOptimizer


BaseName = Literal["adam", "sgd"]
RADIUS_BETAS = (0.9, 0.999)
RADIUS_EPS = 1e-8


def reference_layout(param: torch.Tensor) -> Layout:
    """The reference's rule: output rows for a matrix or conv weight, one row for a 1-D tensor."""
    return "rows" if param.dim() >= 2 else "whole"


@dataclass(frozen=True)
class FTPOptions:
    """FTP's own arguments, as a run that learns its radii with FTP passes them on."""

    constrained: Sequence[tuple[torch.Tensor, Layout]]
    k: float = 1.0
    radius_lr: float = 1e-2
    multipliers: Sequence[Multiplier | None] | None = None


class RadiusAdam:
    """Adam on a vector of radii, one entry per tensor, with a mask of entries to update."""

    def __init__(self, radii: torch.Tensor, *, lr: float) -> None:
        self.radii = radii
        self.lr = lr
        self.m = torch.zeros_like(radii)
        self.v = torch.zeros_like(radii)

    def step(self, grad: torch.Tensor, *, t: int, mask: torch.Tensor | None = None) -> None:
        """One Adam step with bias correction by ``t`` (1-based); masked entries unchanged."""
        beta1, beta2 = RADIUS_BETAS
        m = self.m * beta1 + grad * (1 - beta1)
        v = self.v * beta2 + grad * grad * (1 - beta2)
        step = (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt() + RADIUS_EPS)
        radii = self.radii - self.lr * step
        if mask is not None:
            m, v, radii = (torch.where(mask, new, old) for new, old in
                           ((m, self.m), (v, self.v), (radii, self.radii)))  # fmt: skip
        self.m, self.v, self.radii = m, v, radii

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"radii": self.radii, "m": self.m, "v": self.v}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.radii, self.m, self.v = state["radii"], state["m"], state["v"]


def _base(name: BaseName, params: Any, lr: float, kwargs: dict[str, Any]) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, **kwargs)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, **kwargs)
    raise ConfigError(f"FTP's base optimiser must be adam or sgd, got {name!r}")


class FTP(WrappedOptimizer):
    """A drop-in optimiser that learns one projection radius per constrained tensor.

    Args:
        params: the parameters (or parameter groups) to optimise, as for any optimiser.
        base: ``"adam"`` (the reference's default lr 1e-4) or ``"sgd"`` (1e-2).
        lr: the base optimiser's learning rate.
        exclude: parameters that take the plain step (the new head), matched by identity.
        constrained: ``(parameter, layout)`` pairs to constrain instead of the reference's
            rule; parameters not listed take the plain step.
        multipliers: with ``constrained``, one :data:`~._rowset.Multiplier` or ``None`` per
            pair (BatchNorm's scale through its inference diagonal).
        k: in [0, 1], how much of a positive hypergradient (one that would shrink the
            radius) is applied; 1 (the reference's default) is the strongest constraint.
        radius_lr: the radii's Adam learning rate.
        first_radius: the radius of the first step (1e-8: land on W0).
        **kwargs: passed to the base optimiser (``betas``, ``amsgrad``, ``momentum`` ...);
            weight decay is 0 with FTP in the reference.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
        >>> opt = FTP(model.parameters(), lr=1e-3, exclude=model[1].parameters())
        >>> model(torch.randn(8, 4)).sum().backward()
        >>> opt.step()
        >>> [round(g, 8) for g in opt.radii.tolist()]  # the first step lands on W0
        [1e-08, 1e-08]
    """

    def __init__(
        self,
        params: Iterable[Any],
        base: BaseName = "adam",
        *,
        lr: float = 1e-4,
        exclude: Iterable[torch.Tensor] = (),
        constrained: Sequence[tuple[torch.Tensor, Layout]] | None = None,
        k: float = 1.0,
        radius_lr: float = 1e-2,
        first_radius: float = EPS,
        multipliers: Sequence[Multiplier | None] | None = None,
        **kwargs: Any,
    ) -> None:
        if not 0 <= k <= 1:
            raise ConfigError(f"FTP's k must be in [0, 1], got {k!r}")
        if not radius_lr >= 0:
            raise ConfigError(f"FTP's radius_lr must be >= 0, got {radius_lr!r}")
        if not first_radius > 0:
            raise ConfigError(f"FTP's first_radius must be > 0, got {first_radius!r}")
        super().__init__(_base(base, params, lr, kwargs))
        held = [p for group in self.param_groups for p in group["params"] if p.requires_grad]
        factors: list[Multiplier | None]
        if constrained is None:
            skip = {id(p) for p in exclude}
            pairs = [(p, reference_layout(p)) for p in held if id(p) not in skip]
            factors = [None] * len(pairs)
        else:
            ids = {id(p) for p in held}
            given = multipliers if multipliers is not None else [None] * len(constrained)
            kept = [
                (pair, m) for pair, m in zip(constrained, given, strict=True) if id(pair[0]) in ids
            ]
            pairs, factors = [pair for pair, _ in kept], [m for _, m in kept]
        self.k = k
        self.first_radius = first_radius
        self.rows = RowSet(
            [p for p, _ in pairs], [layout for _, layout in pairs], multipliers=factors
        )
        self.radius = RadiusAdam(
            torch.full((len(self.rows),), first_radius, device=self.rows.device), lr=radius_lr
        )
        self.t = 0
        self._previous: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None

    @property
    def radii(self) -> torch.Tensor:
        """The current radius of each constrained tensor (``constrained_params`` order)."""
        return self.radius.radii

    @property
    def constrained_params(self) -> list[torch.Tensor]:
        return self.rows.tensors

    def hypergradient(self) -> torch.Tensor:
        """``h_p = sum_r <grad_r, c_{t-1,r}> / n_{t-1,r}`` from the current gradients.

        Zero before the first step and for a tensor without a gradient; not yet scaled by k.
        """
        if self._previous is None:
            return torch.zeros_like(self.radii)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.rows.tensors]
        offsets, inverse = self._previous
        gathered = self.rows.gather(grads, gradients=True)
        per_row = zip(gathered, offsets, inverse, strict=True)
        return self.rows.tensor_sum([(g * c).sum(dim=1) * inv for g, c, inv in per_row])

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One base step, the radius update and the projection."""
        loss = self.closure_loss(closure)
        if not len(self.rows):
            self.base.step()
            return loss
        moved = torch.tensor([p.grad is not None for p in self.rows.tensors],
                             device=self.rows.device)  # fmt: skip
        h = self.hypergradient()
        h = torch.where(h > 0, h * self.k, h)
        self.base.step()
        self.t += 1
        candidates = self.rows.gather()
        offsets = self.rows.offsets(candidates)
        norms = self.rows.row_norms(offsets, "l1")
        if self._previous is None:
            self.radius.radii = torch.full_like(self.radii, self.first_radius)
        else:
            self.radius.step(h, t=self.t, mask=moved)
        clipped = torch.minimum(self.radii.clamp(min=EPS), self.rows.tensor_max(norms))
        self.radius.radii = torch.where(moved, clipped, self.radii)
        scales = [
            torch.where(
                still, s, torch.ones_like(s)
            )  # a tensor that did not move is not rewritten
            for still, s in zip(
                self.rows.expand(moved), self.rows.scales(self.radii, norms), strict=True
            )
        ]
        self.rows.write_(self.rows.rescaled(candidates, scales))
        self._previous = (offsets, [n.reciprocal() for n in norms])
        return loss

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["ftp"] = {"t": self.t, **self.radius.state_dict()}
        if self._previous is not None:
            state["ftp"]["offsets"], state["ftp"]["inverse"] = self._previous
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        ftp = state.pop("ftp")
        super().load_state_dict(state)
        self.t = int(ftp["t"])
        self.radius.load_state_dict(ftp)
        self._previous = (ftp["offsets"], ftp["inverse"]) if "offsets" in ftp else None
