"""A transformers ``TrainerCallback`` that keeps the model inside its distance constraint.

Where the ``Trainer`` (transformers 5) calls it::

    on_train_begin      build the constraint from the model (a factory; once)
    then, per optimiser step:
    optimizer.step()    accelerate's optimiser: with a GradScaler, a step that found an
                        inf is skipped and the optimiser's ``step_was_skipped`` says so
    on_optimizer_step   project, unless the step was skipped
    lr_scheduler.step(), model.zero_grad(), on_step_end

With gradient accumulation ``on_optimizer_step`` runs only on the steps that update the
weights, so the projection follows every real update and nothing else.

Needs the ``transformers`` package (``pip install tether[transformers]``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn


try:
    from transformers import TrainerCallback
    from transformers import TrainerControl
    from transformers import TrainerState
    from transformers import TrainingArguments
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "tether.integrations.huggingface needs the transformers package: "
        "install tether[transformers]"
    ) from error

from tether.finetune.regularizers import BaseProjection


ConstraintFactory = Callable[[nn.Module], BaseProjection]
"""Builds the constraint from the Trainer's model, whose current weights are then W0."""


class ConstraintCallback(TrainerCallback):
    """Project the model back inside its constraint after every optimiser step the Trainer takes.

    Args:
        constraint: a built constraint, or a function of the model that builds one when
            training begins (``on_train_begin``). A function is called once: a second
            ``train()`` keeps the first constraint and its W0. When resuming from a
            checkpoint, build the constraint from the pretrained model before ``train`` and
            pass it here instead (the model at ``on_train_begin`` holds the checkpoint).

    Example:
        >>> from tether import DistanceConstraint
        >>> callback = ConstraintCallback(
        ...     lambda model: DistanceConstraint(
        ...         model, norm="mars", radius=1.0, head_radius=10.0, head="classifier"
        ...     )
        ... )
        >>> trainer = Trainer(model=model, args=args, callbacks=[callback])  # doctest: +SKIP
        >>> trainer.train()  # doctest: +SKIP
        >>> callback.constraint.distances()  # doctest: +SKIP
        {'extractor': 0.93, 'head': 4.1}
    """

    def __init__(self, constraint: BaseProjection | ConstraintFactory) -> None:
        if not isinstance(constraint, BaseProjection) and not callable(constraint):
            raise TypeError(
                "constraint must be a BaseProjection or a function of the model "
                f"that returns one, got {constraint!r}"
            )
        self._constraint = constraint if isinstance(constraint, BaseProjection) else None
        self._source = constraint

    @property
    def constraint(self) -> BaseProjection:
        """The constraint in use (built at the first ``on_train_begin`` from a factory)."""
        if self._constraint is None:
            raise RuntimeError("the constraint is built when training begins")
        return self._constraint

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        if self._constraint is not None or isinstance(self._source, BaseProjection):
            return
        constraint = self._source(kwargs["model"])
        if not isinstance(constraint, BaseProjection):
            raise TypeError(
                f"the constraint factory returned {constraint!r}, not a BaseProjection"
            )
        self._constraint = constraint

    def on_optimizer_step(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        if getattr(kwargs.get("optimizer"), "step_was_skipped", False):
            return
        self.constraint.project_()
