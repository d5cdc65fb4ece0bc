"""Reference (oracle) implementations the tests and benchmarks compare Tether's code with.

Written from the formulas, as plainly as possible, and slow on purpose: a test that the
vectorised projection matches these is a test of the math, not of the code against itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tether.finetune.layers import HEAD
from tether.finetune.regularizers._l1ball import project_rows_l1
from tether.finetune.regularizers._reference import Reference
from tether.finetune.regularizers._targets import BN_EPS
from tether.finetune.regularizers._targets import Target
from tether.finetune.regularizers.config import Norm


class NaiveProjection:
    """The reference projection: a Python loop with one kernel chain per tensor.

    The formulas as the papers' code writes them, with nothing shared with
    :class:`~tether.finetune.regularizers.DistanceConstraint`'s vectorised plan: for every
    weight matrix
    ``W <- W0 + T / max(1, ||T|| / r)`` with ``T = W - W0`` and ``||.||`` the l1 norm of each
    output row (``mars``) or the Frobenius norm of the tensor (``frob``); ``exact`` projects
    each row onto its l1 ball instead; BatchNorm gamma is clipped element-wise through the
    diagonal ``gamma / sqrt(running_var + eps)``.
    """

    def __init__(
        self,
        targets: Sequence[Target],
        reference: Reference,
        radii: dict[str, float],
        *,
        norm: Norm,
        exact: bool,
        relative: bool,
    ) -> None:
        self.norm = norm
        self.exact = exact and norm == "mars"
        self.matrices: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.diagonals: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, Target]] = []
        for target in targets:
            param = target.param.detach()
            w0 = reference.weight(target.name)
            radius = torch.tensor(radii[target.group], dtype=param.dtype, device=param.device)
            if target.kind == "matrix":
                w0 = torch.zeros_like(w0) if target.group == HEAD else w0
                if target.transposed:  # a Conv1D [in, out]: its rows are the columns
                    param, w0 = param.T, w0.T
                if relative and target.group != HEAD:
                    radius = radius * self._norms(w0)
                self.matrices.append((param, w0, radius))
            else:
                d0 = w0 / _bn_scale(reference.running_var(target.name), w0)
                if relative:
                    radius = radius * d0.abs()
                self.diagonals.append((param, d0, radius, target))

    def _norms(self, t: torch.Tensor) -> torch.Tensor:
        """Per-row l1 norms shaped to broadcast against ``t``, or the Frobenius norm."""
        if self.norm == "frob":
            return torch.linalg.vector_norm(t)
        return t.abs().sum(dim=tuple(range(1, t.dim())), keepdim=True)

    @torch.no_grad()
    def project_(self) -> None:
        for param, w0, radius in self.matrices:
            t = param - w0
            if self.exact:
                rows = t.reshape(t.shape[0], -1)
                param.copy_(w0 + project_rows_l1(rows, radius.reshape(-1)).view_as(t))
            else:
                param.copy_(w0 + t / torch.clamp(self._norms(t) / radius, min=1.0))
        for param, d0, radius, target in self.diagonals:
            scale = _bn_scale(target.running_var(), param)
            t = param / scale - d0
            param.copy_((d0 + torch.maximum(torch.minimum(t, radius), -radius)) * scale)


def _bn_scale(var: torch.Tensor | None, gamma: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(gamma) if var is None else torch.sqrt(var + BN_EPS)
