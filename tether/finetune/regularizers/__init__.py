"""Distance regularisers: projections (after the step) and penalties (in the loss)."""

from tether.finetune.regularizers._base import BasePenalty
from tether.finetune.regularizers._base import BaseProjection
from tether.finetune.regularizers._base import NoConstraint
from tether.finetune.regularizers._base import NoPenalty
from tether.finetune.regularizers._constraint import DistanceConstraint
from tether.finetune.regularizers._constraint import resolve_radii
from tether.finetune.regularizers._context import PenaltyContext
from tether.finetune.regularizers._context import SourceTask
from tether.finetune.regularizers._l1ball import project_rows_l1
from tether.finetune.regularizers._plan import NORMS
from tether.finetune.regularizers._plan import ProjectionPlan
from tether.finetune.regularizers._reference import Reference
from tether.finetune.regularizers._registry import PenaltyInfo
from tether.finetune.regularizers._registry import build_constraint
from tether.finetune.regularizers._registry import build_penalty
from tether.finetune.regularizers._registry import list_penalties
from tether.finetune.regularizers._registry import penalty_info
from tether.finetune.regularizers._registry import register_penalty
from tether.finetune.regularizers._sp import DistancePenalty
from tether.finetune.regularizers._targets import Target
from tether.finetune.regularizers._targets import collect_targets
from tether.finetune.regularizers.config import ConstraintConfig
from tether.finetune.regularizers.config import PenaltyConfig


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
