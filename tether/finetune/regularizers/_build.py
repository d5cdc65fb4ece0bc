"""The built-in penalty builders, and the two functions that build a recipe's regularisers.

:mod:`tether.finetune.regularizers.penalties` names each builder here; this module is
imported only when a run builds its regularisers.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from torch import nn

from tether.finetune.layers import LayerGroups
from tether.finetune.layers import geometric_radii
from tether.finetune.layers import unwrap
from tether.finetune.regularizers._base import BasePenalty
from tether.finetune.regularizers._base import BaseProjection
from tether.finetune.regularizers._base import NoConstraint
from tether.finetune.regularizers._base import NoPenalty
from tether.finetune.regularizers._constraint import DistanceConstraint
from tether.finetune.regularizers._context import PenaltyContext
from tether.finetune.regularizers._reference import Reference
from tether.finetune.regularizers._sp import DistancePenalty
from tether.finetune.regularizers.penalties import penalty_info


if TYPE_CHECKING:
    from tether.finetune.regularizers.config import ConstraintConfig
    from tether.finetune.regularizers.config import PenaltyConfig


def build_penalty(cfg: PenaltyConfig, ctx: PenaltyContext) -> BasePenalty:
    """The penalty a recipe names, built for one run (:mod:`.penalties` holds the names).

    A DataParallel, DistributedDataParallel or ``torch.compile`` wrapper around ``ctx.model``
    is looked through: every builder sees the inner model and its names.
    """
    return penalty_info(cfg.name).builder()(cfg, replace(ctx, model=unwrap(ctx.model)))


def no_penalty(cfg: PenaltyConfig, ctx: PenaltyContext) -> BasePenalty:
    return NoPenalty()


def l2_sp(cfg: PenaltyConfig, ctx: PenaltyContext) -> BasePenalty:
    return DistancePenalty(
        ctx.model, head=ctx.head, groups=ctx.groups, distance="squared",
        alpha=cfg.alpha, beta=cfg.beta, half=True, include=cfg.include,
    )  # fmt: skip


def frob_sp(cfg: PenaltyConfig, ctx: PenaltyContext) -> BasePenalty:
    return DistancePenalty(
        ctx.model, head=ctx.head, groups=ctx.groups, distance="squared",
        alpha=cfg.alpha, beta=cfg.beta, include=cfg.include,
    )  # fmt: skip


def mars_sp(cfg: PenaltyConfig, ctx: PenaltyContext) -> BasePenalty:
    return DistancePenalty(
        ctx.model, head=ctx.head, groups=ctx.groups, distance="mars",
        alpha=cfg.alpha, beta=cfg.beta, include=cfg.include,
    )  # fmt: skip


def l1_sp(cfg: PenaltyConfig, ctx: PenaltyContext) -> BasePenalty:
    return DistancePenalty(
        ctx.model, head=ctx.head, groups=ctx.groups, distance="l1", head_distance="squared",
        alpha=cfg.alpha, beta=cfg.beta, half=True, include=cfg.include,
    )  # fmt: skip


def l2_sp_fisher(cfg: PenaltyConfig, ctx: PenaltyContext) -> BasePenalty:
    from tether.finetune.regularizers._fisher import build_fisher

    return build_fisher(
        ctx, alpha=cfg.alpha, beta=cfg.beta, include=cfg.include,
        samples=cfg.fisher_samples, epsilon=cfg.fisher_epsilon,
    )  # fmt: skip


def bss(cfg: PenaltyConfig, ctx: PenaltyContext) -> BasePenalty:
    from tether.finetune.regularizers._bss import BatchSpectralShrinkage

    return BatchSpectralShrinkage(ctx.model, head=ctx.head, eta=cfg.alpha, k=cfg.k)


def delta(cfg: PenaltyConfig, ctx: PenaltyContext) -> BasePenalty:
    from tether.finetune.regularizers._delta import build_delta

    return build_delta(
        ctx, alpha=cfg.alpha, beta=cfg.beta, layers=cfg.layers,
        probe_epochs=cfg.probe_epochs, ablation_batches=cfg.ablation_batches,
    )  # fmt: skip


def build_constraint(
    cfg: ConstraintConfig,
    model: nn.Module,
    *,
    head: str,
    groups: LayerGroups,
    reference: Reference | None = None,
) -> BaseProjection:
    """The projection a recipe names (``norm: none`` gives :class:`NoConstraint`)."""
    if cfg.norm == "none":
        return NoConstraint()
    radius: float | dict[str, float] = cfg.radius
    if cfg.scale is not None and not isinstance(cfg.radius, dict):
        radius = geometric_radii(groups.extractor, base=cfg.radius, scale=cfg.scale)
    return DistanceConstraint(
        model, norm=cfg.norm, radius=radius, head_radius=cfg.head_radius, head=head,
        mode=cfg.mode, relative=cfg.relative, groups=groups, reference=reference,
    )  # fmt: skip
