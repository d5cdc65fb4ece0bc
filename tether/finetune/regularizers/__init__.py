"""Distance regularisers: projections (after the step) and penalties (in the loss).

The names below are imported on first use: the configs, the norm names and the penalty table
need no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tether._lazy import lazy_exports


if TYPE_CHECKING:
    from tether.finetune.regularizers._base import BasePenalty as BasePenalty
    from tether.finetune.regularizers._base import BaseProjection as BaseProjection
    from tether.finetune.regularizers._base import NoConstraint as NoConstraint
    from tether.finetune.regularizers._base import NoPenalty as NoPenalty
    from tether.finetune.regularizers._build import build_constraint as build_constraint
    from tether.finetune.regularizers._build import build_penalty as build_penalty
    from tether.finetune.regularizers._constraint import DistanceConstraint as DistanceConstraint
    from tether.finetune.regularizers._constraint import resolve_radii as resolve_radii
    from tether.finetune.regularizers._context import PenaltyContext as PenaltyContext
    from tether.finetune.regularizers._context import SourceTask as SourceTask
    from tether.finetune.regularizers._l1ball import project_rows_l1 as project_rows_l1
    from tether.finetune.regularizers._plan import ProjectionPlan as ProjectionPlan
    from tether.finetune.regularizers._reference import Reference as Reference
    from tether.finetune.regularizers._sp import DistancePenalty as DistancePenalty
    from tether.finetune.regularizers._targets import Target as Target
    from tether.finetune.regularizers._targets import collect_targets as collect_targets
    from tether.finetune.regularizers.config import NORMS as NORMS
    from tether.finetune.regularizers.config import ConstraintConfig as ConstraintConfig
    from tether.finetune.regularizers.config import PenaltyConfig as PenaltyConfig
    from tether.finetune.regularizers.penalties import PenaltyInfo as PenaltyInfo
    from tether.finetune.regularizers.penalties import list_penalties as list_penalties
    from tether.finetune.regularizers.penalties import penalty_info as penalty_info
    from tether.finetune.regularizers.penalties import register_penalty as register_penalty

_EXPORTS = {
    "NORMS": "tether.finetune.regularizers.config",
    "BasePenalty": "tether.finetune.regularizers._base",
    "BaseProjection": "tether.finetune.regularizers._base",
    "ConstraintConfig": "tether.finetune.regularizers.config",
    "DistanceConstraint": "tether.finetune.regularizers._constraint",
    "DistancePenalty": "tether.finetune.regularizers._sp",
    "NoConstraint": "tether.finetune.regularizers._base",
    "NoPenalty": "tether.finetune.regularizers._base",
    "PenaltyConfig": "tether.finetune.regularizers.config",
    "PenaltyContext": "tether.finetune.regularizers._context",
    "PenaltyInfo": "tether.finetune.regularizers.penalties",
    "ProjectionPlan": "tether.finetune.regularizers._plan",
    "Reference": "tether.finetune.regularizers._reference",
    "SourceTask": "tether.finetune.regularizers._context",
    "Target": "tether.finetune.regularizers._targets",
    "build_constraint": "tether.finetune.regularizers._build",
    "build_penalty": "tether.finetune.regularizers._build",
    "collect_targets": "tether.finetune.regularizers._targets",
    "list_penalties": "tether.finetune.regularizers.penalties",
    "penalty_info": "tether.finetune.regularizers.penalties",
    "project_rows_l1": "tether.finetune.regularizers._l1ball",
    "register_penalty": "tether.finetune.regularizers.penalties",
    "resolve_radii": "tether.finetune.regularizers._constraint",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
