"""A Lightning callback that keeps a LightningModule's network inside its distance constraint.

The callback attaches the constraint to the optimisers Lightning built, as a training loop of
one's own would (:meth:`~tether.finetune.regularizers.BaseProjection.attach`): the projection
runs as each optimiser's step post-hook, so it follows the real ``optimizer.step()`` whatever
the precision plugin, gradient accumulation or manual optimisation does, and a step that a
``GradScaler`` skips projects nothing::

    on_train_start   build the constraint (once) and attach it to every optimiser
    every step       optimizer.step()  ->  constraint.project_()
    on_train_end     detach it (on_exception too)

Needs the ``lightning`` package (``pip install tether[lightning]``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.hooks import RemovableHandle


try:
    from lightning.pytorch import Callback
    from lightning.pytorch import LightningModule
    from lightning.pytorch import Trainer
    from lightning.pytorch.core.optimizer import LightningOptimizer
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "tether.integrations.lightning needs the lightning package: install tether[lightning]"
    ) from error

from tether.finetune.regularizers import BaseProjection


ConstraintFactory = Callable[[LightningModule], BaseProjection]
"""Builds the constraint from the LightningModule, whose current weights are then W0."""


class ConstraintCallback(Callback):
    """Project the network back inside its constraint after every optimiser step.

    Args:
        constraint: a built constraint, or a function of the LightningModule that builds one
            when training starts (the network usually lives inside the module, e.g.
            ``module.model``). A function is called once: a second ``fit`` keeps the first
            constraint and its W0. When resuming from a checkpoint, the weights at
            ``on_train_start`` are the checkpoint's, so build the constraint from the
            pretrained network before ``fit`` and pass it here instead.
        log_distances: if true, log ``distance/<group>`` (:meth:`BaseProjection.distances`)
            through ``pl_module.log`` at the end of every training epoch (one pass over the
            constrained tensors per epoch).

    Example:
        >>> from tether import DistanceConstraint
        >>> callback = ConstraintCallback(
        ...     lambda module: DistanceConstraint(
        ...         module.model, norm="mars", radius=2.0, head_radius=10.0, head="fc"
        ...     )
        ... )
        >>> trainer = Trainer(callbacks=[callback])  # doctest: +SKIP
        >>> trainer.fit(module)  # doctest: +SKIP
        >>> callback.constraint.distances()  # doctest: +SKIP
        {'stem': 0.41, 'layer1': 1.2, ...}
    """

    def __init__(
        self, constraint: BaseProjection | ConstraintFactory, *, log_distances: bool = False
    ) -> None:
        if not isinstance(constraint, BaseProjection) and not callable(constraint):
            raise TypeError(
                "constraint must be a BaseProjection or a function of the LightningModule "
                f"that returns one, got {constraint!r}"
            )
        self._constraint = constraint if isinstance(constraint, BaseProjection) else None
        self._source = constraint
        self.log_distances = log_distances
        self._handles: list[RemovableHandle] = []

    @property
    def constraint(self) -> BaseProjection:
        """The constraint in use (built at the first ``on_train_start`` from a factory)."""
        if self._constraint is None:
            raise RuntimeError("the constraint is built when training starts")
        return self._constraint

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._constraint is None:
            self._constraint = _built(self._source, pl_module)
        self._detach()
        self._handles = [self._constraint.attach(_torch_optimizer(o)) for o in trainer.optimizers]

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.log_distances:
            distances = self.constraint.distances()
            pl_module.log_dict({f"distance/{g}": d for g, d in distances.items()})

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._detach()

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        self._detach()

    def _detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _built(
    source: BaseProjection | ConstraintFactory, pl_module: LightningModule
) -> BaseProjection:
    constraint = source if isinstance(source, BaseProjection) else source(pl_module)
    if not isinstance(constraint, BaseProjection):
        raise TypeError(f"the constraint factory returned {constraint!r}, not a BaseProjection")
    return constraint


def _torch_optimizer(
    optimizer: torch.optim.Optimizer | LightningOptimizer,
) -> torch.optim.Optimizer:
    """The torch optimiser whose ``step`` really updates the weights."""
    while isinstance(optimizer, LightningOptimizer):
        optimizer = optimizer.optimizer
    return optimizer
