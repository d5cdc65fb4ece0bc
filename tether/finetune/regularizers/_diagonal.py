"""The diagonal block: BatchNorm and LayerNorm gammas, projected element-wise in one batch."""

from __future__ import annotations

import torch

from tether.finetune.regularizers._reference import Reference
from tether.finetune.regularizers._targets import BN_EPS
from tether.finetune.regularizers._targets import Target


def all_infinite(radius: torch.Tensor) -> bool:
    """Whether every radius is infinite (False on the data-less ``meta`` device)."""
    return not radius.is_meta and bool(torch.isinf(radius).all())


class DiagBlock:
    """Element-wise targets: BatchNorm through its diagonal gamma/sqrt(var+eps), LayerNorm as is.

    The diagonal is clipped element-wise, ``d <- clip(d, d0 - r, d0 + r)``, which is both the
    papers' rescaling and the exact projection for a diagonal map. The *current* running
    variance is used, as in the reference code. A block holds either only targets with a
    running variance (``scaled``) or only targets without, so a step is a fixed handful of
    batched ops whatever the number of layers.
    """

    def __init__(self, targets: list[Target], reference: Reference, *, scaled: bool) -> None:
        self.targets = targets
        self.scaled = scaled
        self.counts = [t.param.numel() for t in targets]
        self.n_rows = sum(self.counts)
        d0 = []
        for t in targets:  # once, at construction
            gamma0 = reference.weight(t.name).view(-1)
            var0 = reference.running_var(t.name) if scaled else None
            if var0 is not None:
                gamma0 = gamma0 / torch.sqrt(var0.view(-1).to(gamma0.dtype) + BN_EPS)
            d0.append(gamma0)
        self.d0 = torch.cat(d0)  # the head holds no diagonal targets (collect_targets)
        self.radius = torch.empty(0)
        self.free = False
        self.low = self.high = self.d0
        self.group = torch.empty(0, dtype=torch.long)
        self.params: list[torch.Tensor] = []
        self.refresh_views()

    def set_radius(self, radius: torch.Tensor) -> None:
        self.radius = radius
        self.free = all_infinite(radius)
        self.low, self.high = self.d0 - radius, self.d0 + radius

    def refresh_views(self) -> None:
        self.params = [t.param.detach().view(-1) for t in self.targets]

    def _scale(self, dtype: torch.dtype) -> torch.Tensor:
        """``sqrt(running_var + eps)`` of every target, from the live running variances."""
        variances = [t.running_var() for t in self.targets]  # 1-d buffers, never need grad
        var = torch.cat([v for v in variances if v is not None]).to(dtype)
        return var.add_(BN_EPS).sqrt_()

    def reference_norms(self) -> torch.Tensor:
        return self.d0.abs()

    def norms(self) -> torch.Tensor:
        d = torch.cat(self.params)
        if self.scaled:
            d.div_(self._scale(d.dtype))
        return d.sub_(self.d0).abs_()

    def project(self, *, exact: bool, sync: bool) -> None:
        if self.free:
            return
        gamma = torch.cat(self.params)
        if self.scaled:
            scale = self._scale(gamma.dtype)
            d = gamma / scale
            clipped = torch.clamp(d, self.low, self.high)
            inside = clipped == d  # left bit for bit, not rounded through gamma / s * s
            torch.where(inside, gamma, clipped.mul_(scale), out=gamma)
        else:
            torch.clamp(gamma, self.low, self.high, out=gamma)
        torch._foreach_copy_(self.params, list(gamma.split(self.counts)))
