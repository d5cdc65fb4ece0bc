"""An optimiser that runs a PyTorch optimiser's step and adds its own work around it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class WrappedOptimizer(torch.optim.Optimizer):
    """Shares ``base``'s parameter groups and state, so that a learning-rate scheduler, a
    ``GradScaler`` and ``state_dict`` see one optimiser; subclasses call :meth:`base_step`.

    Args:
        base: the PyTorch optimiser that makes the ordinary step.
    """

    def __init__(self, base: torch.optim.Optimizer) -> None:
        self.base = base
        super().__init__(base.param_groups, base.defaults)
        self._relink()

    def _relink(self) -> None:
        """Point ``base`` at this optimiser's groups and state (one list, one dict)."""
        self.base.param_groups, self.base.state = self.param_groups, self.state

    @staticmethod
    def closure_loss(closure: Callable[[], Any] | None) -> Any:
        """The closure's loss, evaluated with gradients on (``None`` without a closure)."""
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._relink()  # the parent replaced the groups and the state
