"""W0: the frozen copy of the pretrained tensors that every distance is measured from."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tether.finetune.regularizers._targets import Target


class Reference:
    """A snapshot of the targets' weights (and BatchNorm running variances).

    Not a loose dict: it is built from, and checked against, the target list, so a name or
    shape that does not match the model fails at construction with a message that says which.

    Args:
        targets: the tensors to snapshot (their current values become W0).
    """

    def __init__(self, targets: Sequence[Target]) -> None:
        self._weights = {t.name: t.param.detach().clone() for t in targets}
        self._running_vars: dict[str, torch.Tensor] = {}
        for t in targets:
            var = t.running_var()
            if var is not None:
                self._running_vars[t.name] = var.detach().clone()

    def check(self, targets: Sequence[Target]) -> None:
        """Raise ``ValueError`` unless every target has a reference of the same shape."""
        for t in targets:
            ref = self._weights.get(t.name)
            if ref is None:
                raise ValueError(f"the reference weights have no tensor {t.name!r}")
            if ref.shape != t.param.shape:
                raise ValueError(
                    f"reference {t.name!r} has shape {list(ref.shape)}, "
                    f"the model has {list(t.param.shape)}"
                )

    def moved(self, targets: Sequence[Target]) -> Reference:
        """This W0 where, and in the dtype, the targets' parameters now live (a model moved
        with ``.to()`` after the reference was taken); the values are kept."""
        moved = Reference([])
        for t in targets:
            p = t.param
            moved._weights[t.name] = self._weights[t.name].to(device=p.device, dtype=p.dtype)
            var, live = self._running_vars.get(t.name), t.running_var()
            if var is not None:
                dtype = live.dtype if live is not None else var.dtype
                moved._running_vars[t.name] = var.to(device=p.device, dtype=dtype)
        return moved

    def weight(self, name: str) -> torch.Tensor:
        return self._weights[name]

    def running_var(self, name: str) -> torch.Tensor | None:
        return self._running_vars.get(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._weights)
