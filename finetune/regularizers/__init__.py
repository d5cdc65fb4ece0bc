"""Distance regularisers: projections (after the step) and penalties (in the loss)."""

from finetune.regularizers._base import BasePenalty
from finetune.regularizers._base import BaseProjection
from finetune.regularizers._base import NoConstraint
from finetune.regularizers._base import NoPenalty
from finetune.regularizers._constraint import DistanceConstraint
from finetune.regularizers._constraint import resolve_radii
from finetune.regularizers._context import PenaltyContext
from finetune.regularizers._context import SourceTask
from finetune.regularizers._l1ball import project_rows_l1
from finetune.regularizers._plan import NORMS
from finetune.regularizers._plan import ProjectionPlan
from finetune.regularizers._reference import Reference
from finetune.regularizers._registry import PenaltyInfo
from finetune.regularizers._registry import build_constraint
from finetune.regularizers._registry import build_penalty
from finetune.regularizers._registry import list_penalties
from finetune.regularizers._registry import penalty_info
from finetune.regularizers._registry import register_penalty
from finetune.regularizers._sp import DistancePenalty
from finetune.regularizers._targets import Target
from finetune.regularizers._targets import collect_targets
from finetune.regularizers.config import ConstraintConfig
from finetune.regularizers.config import PenaltyConfig


__all__ = [
    "NORMS",
    "BasePenalty",
    "BaseProjection",
    "ConstraintConfig",
    "DistanceConstraint",
    "DistancePenalty",
    "NoConstraint",
    "NoPenalty",
    "PenaltyConfig",
    "PenaltyContext",
    "PenaltyInfo",
    "ProjectionPlan",
    "Reference",
    "SourceTask",
    "Target",
    "build_constraint",
    "build_penalty",
    "collect_targets",
    "list_penalties",
    "penalty_info",
    "project_rows_l1",
    "register_penalty",
    "resolve_radii",
]
