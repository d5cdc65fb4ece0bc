"""The two regulariser families and their null objects.

* A *projection* acts on the weights after every ``optimizer.step()``: ``project_()``.
* A *penalty* adds a loss term: ``penalty(inputs) -> scalar tensor``. Every penalty takes the
  same argument (the batch the model has just seen) and ignores what it does not need, so
  the training loop never branches on the method.
"""

from __future__ import annotations

import abc

import torch
from torch.utils.hooks import RemovableHandle


class BaseProjection(abc.ABC):
    """Keeps the weights inside a set after every optimiser step."""

    def attach(self, optimizer: torch.optim.Optimizer) -> RemovableHandle:
        """Project after every step ``optimizer`` takes: the one line a training loop adds.

        The projection runs as the optimiser's step post-hook, so a step that does not
        happen (a mixed-precision ``GradScaler`` that found an inf skips ``step``) projects
        nothing. ``handle.remove()`` detaches it.
        """
        return optimizer.register_step_post_hook(lambda opt, args, kwargs: self.project_())

    @abc.abstractmethod
    def project_(self) -> None:
        """Move the model's weights back inside the set, in place."""

    @abc.abstractmethod
    def distances(self) -> dict[str, float]:
        """``{group: largest distance from W0}`` in the projection's own norm."""


class NoConstraint(BaseProjection):
    """Standard fine-tuning: the weights are free."""

    def project_(self) -> None:
        return None

    def distances(self) -> dict[str, float]:
        return {}

    def __repr__(self) -> str:
        return "no constraint"


class BasePenalty(abc.ABC):
    """A differentiable term added to the training loss."""

    @abc.abstractmethod
    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """The penalty for the batch ``inputs`` the model has just been run on (a scalar)."""


class NoPenalty(BasePenalty):
    """No loss term (standard fine-tuning, or a projection used alone)."""

    def __init__(self) -> None:
        self._zero = torch.zeros(())

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        if self._zero.device != inputs.device:
            self._zero = torch.zeros((), device=inputs.device)
        return self._zero
