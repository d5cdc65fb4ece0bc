"""SPD, Selective Projection Decay (Tian, Huang, Kira, NeurIPS 2024): Adam that decays selectively.

No radius: one strength ``lam``. Per tensor, per step, with anchor ``W0``:

1. plain Adam (no decoupled decay) gives the candidate ``W'``;
2. the step is *fighting* the accumulated deviation when ``s = <-grad, W - W0> < 0``; only
   then
3. ``r = clamp((||W' - W0|| - ||W - W0||) / ||W' - W0||, 0, 1)`` (Frobenius norms; 0 when
   ``W' = W0``) and
4. ``W' <- W' - lam r (W' - W0)``: with ``lam = 1`` the deviation's norm cannot grow on such
   a step (it is put back on the old sphere); ``r = 0`` when it shrank anyway.

A tensor with ``s >= 0``, or ``lam = 0``, takes the plain Adam step bit for bit. ``anchor=
"zero"`` measures from ``W = 0`` instead of the pretrained weights (adapters such as LoRA, whose
pretrained value is zero by construction) and stores no copy. The norms, dot products and the
update are batched over all tensors (``torch._foreach_*``); the dot products are one fused
kernel per tensor.

Like FTP, SPD shares Adam's ``param_groups`` and ``state``: a scheduler, ``GradScaler.step``
and ``state_dict`` work on it, and the parameters of a DataParallel, DistributedDataParallel or
compiled model are the inner model's (exclude the head by identity).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from typing import Literal

import torch

from tether.errors import ConfigError
from tether.finetune.regularizers._wrapped import WrappedOptimizer


Anchor = Literal["pretrained", "zero"]
ANCHORS: tuple[Anchor, ...] = ("pretrained", "zero")


def _dots(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """``[<a_i, b_i>]`` for two lists of same-shaped tensors.

    One fused ``dot`` per tensor: a product, a ``cat`` and a segmented sum would write and
    read the whole model twice more (on ResNet-50's CPU step, an order of magnitude slower).
    """
    return torch.stack(
        [torch.dot(x.reshape(-1), y.reshape(-1)) for x, y in zip(a, b, strict=True)]
    )


class SPD(WrappedOptimizer):
    """Adam with selective projection decay towards the anchor.

    Args:
        params: the parameters (or groups) to optimise.
        lr: Adam's learning rate.
        lam: the decay strength (>= 0; 0 is Adam).
        exclude: parameters that take the plain Adam step (the new head), by identity.
        anchor: ``"pretrained"`` (W0 = the parameters now) or ``"zero"``.
        **kwargs: passed to :class:`torch.optim.Adam` (``betas``, ``eps``, ``amsgrad``).

    Example:
        >>> layer = torch.nn.Linear(3, 2)
        >>> opt = SPD(layer.parameters(), lr=0.1, lam=1.0)
        >>> layer(torch.ones(1, 3)).sum().backward()
        >>> opt.step()
    """

    def __init__(
        self,
        params: Iterable[Any],
        *,
        lr: float = 1e-3,
        lam: float = 1.0,
        exclude: Iterable[torch.Tensor] = (),
        anchor: Anchor = "pretrained",
        **kwargs: Any,
    ) -> None:
        if not lam >= 0:
            raise ConfigError(f"SPD's lam must be >= 0, got {lam!r}")
        if anchor not in ANCHORS:
            raise ConfigError(f"SPD's anchor must be one of {', '.join(ANCHORS)}, got {anchor!r}")
        if kwargs.get("weight_decay", 0):
            raise ConfigError("SPD replaces weight decay: set weight_decay to 0")
        super().__init__(torch.optim.Adam(params, lr=lr, **kwargs))
        self.lam = lam
        skip = {id(p) for p in exclude}
        self.decayed = [
            p for group in self.param_groups for p in group["params"]
            if p.requires_grad and id(p) not in skip
        ]  # fmt: skip
        self.anchors = None if anchor == "zero" else [p.detach().clone() for p in self.decayed]

    def _deviations(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.anchors is None:
            return [p.detach() for p in params]  # read before the step, never stored
        return list(torch._foreach_sub([p.detach() for p in params], self.anchors))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One Adam step, then the selective decay of the tensors that fight their deviation."""
        loss = self.closure_loss(closure)
        index = [i for i, p in enumerate(self.decayed) if p.grad is not None]
        params = [self.decayed[i] for i in index]
        if self.lam == 0 or not params:
            self.base.step()
            return loss
        before = self._deviations(params)
        fights = _dots([p.grad for p in params], before) > 0  # <-grad, W - W0> < 0
        old = torch.stack(torch._foreach_norm(before))
        del before
        self.base.step()
        after = self._deviations(params)
        new = torch.stack(torch._foreach_norm(after))
        ratio = torch.where(new > 0, (new - old) / new, torch.zeros_like(new)).clamp(0, 1)
        factors = torch.where(fights, self.lam * ratio, torch.zeros_like(ratio)).tolist()
        chosen = [i for i, f in enumerate(factors) if f > 0]
        if chosen:
            steps = torch._foreach_mul([after[i] for i in chosen], [factors[i] for i in chosen])
            torch._foreach_sub_([params[i].detach() for i in chosen], steps)
        return loss
