"""Names -> regularisers. Strings become objects here and nowhere else.

A new penalty is one file and one ``@register_penalty`` entry; nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from tether.finetune.layers import LayerGroups
from tether.finetune.layers import geometric_radii
from tether.finetune.regularizers._base import BasePenalty
from tether.finetune.regularizers._base import BaseProjection
from tether.finetune.regularizers._base import NoConstraint
from tether.finetune.regularizers._base import NoPenalty
from tether.finetune.regularizers._constraint import DistanceConstraint
from tether.finetune.regularizers._context import PenaltyContext
from tether.finetune.regularizers._reference import Reference
from tether.finetune.regularizers._sp import DistancePenalty


if TYPE_CHECKING:
    from tether.finetune.regularizers.config import ConstraintConfig
    from tether.finetune.regularizers.config import PenaltyConfig


Builder = Callable[["PenaltyConfig", PenaltyContext], BasePenalty]


@dataclass(frozen=True)
class PenaltyInfo:
    """A registered penalty: its name, one line for ``--help``, and how to build it."""

    name: str
    description: str
    build: Builder


_PENALTIES: dict[str, PenaltyInfo] = {}


def register_penalty(name: str, description: str) -> Callable[[Builder], Builder]:
    """Register a penalty builder under ``name`` (duplicates are an error)."""

    def decorator(build: Builder) -> Builder:
        if name in _PENALTIES:
            raise ValueError(f"penalty {name!r} is already registered")
        _PENALTIES[name] = PenaltyInfo(name, description, build)
        return build

    return decorator


def list_penalties() -> list[str]:
    """The registered penalty names, sorted."""
    return sorted(_PENALTIES)


def penalty_info(name: str) -> PenaltyInfo:
    return _PENALTIES[name]


def build_penalty(cfg: PenaltyConfig, ctx: PenaltyContext) -> BasePenalty:
    """The penalty a recipe names, built for one run."""
    return _PENALTIES[cfg.name].build(cfg, ctx)


@register_penalty("none", "no loss term: standard fine-tuning")
def _none(cfg: PenaltyConfig, ctx: PenaltyContext) -> BasePenalty:
    return NoPenalty()


@register_penalty("l2-sp", "alpha/2 ||w - w0||^2 + beta/2 ||w_head||^2 (Li et al., ICML 2018)")
def _l2sp(cfg: PenaltyConfig, ctx: PenaltyContext) -> BasePenalty:
    return DistancePenalty(
        ctx.model, head=ctx.head, groups=ctx.groups, distance="squared",
        alpha=cfg.alpha, beta=cfg.beta, half=True, include=cfg.include,
    )  # fmt: skip


@register_penalty("frob-sp", "alpha ||W - W0||_F^2 per layer + beta ||W_head||_F^2 (MARS code)")
def _frobsp(cfg: PenaltyConfig, ctx: PenaltyContext) -> BasePenalty:
    return DistancePenalty(
        ctx.model, head=ctx.head, groups=ctx.groups, distance="squared",
        alpha=cfg.alpha, beta=cfg.beta, include=cfg.include,
    )  # fmt: skip


@register_penalty(
    "mars-sp", "alpha sum_layers ||W - W0||_mars + beta ||W_head||_mars (Gouk et al. 2021)"
)
def _marssp(cfg: PenaltyConfig, ctx: PenaltyContext) -> BasePenalty:
    return DistancePenalty(
        ctx.model, head=ctx.head, groups=ctx.groups, distance="mars",
        alpha=cfg.alpha, beta=cfg.beta, include=cfg.include,
    )  # fmt: skip


@register_penalty(
    "l1-sp", "alpha sum |w - w0| + beta/2 ||w_head||^2 (L1-SP, Li et al., ICML 2018)"
)
def _l1sp(cfg: PenaltyConfig, ctx: PenaltyContext) -> BasePenalty:
    return DistancePenalty(
        ctx.model, head=ctx.head, groups=ctx.groups, distance="l1", head_distance="squared",
        alpha=cfg.alpha, beta=cfg.beta, half=True, include=cfg.include,
    )  # fmt: skip


@register_penalty(
    "l2-sp-fisher",
    "alpha/2 sum F (w - w0)^2 + beta/2 ||w_head||^2, F = source Fisher (Li et al., ICML 2018)",
)
def _l2sp_fisher(cfg: PenaltyConfig, ctx: PenaltyContext) -> BasePenalty:
    from tether.finetune.regularizers._fisher import build_fisher

    return build_fisher(
        ctx, alpha=cfg.alpha, beta=cfg.beta, include=cfg.include,
        samples=cfg.fisher_samples, epsilon=cfg.fisher_epsilon,
    )  # fmt: skip


@register_penalty(
    "bss", "alpha * k smallest squared singular values of the features (Chen et al., 2019)"
)
def _bss(cfg: PenaltyConfig, ctx: PenaltyContext) -> BasePenalty:
    from tether.finetune.regularizers._bss import BatchSpectralShrinkage

    return BatchSpectralShrinkage(ctx.model, head=ctx.head, eta=cfg.alpha, k=cfg.k)


@register_penalty("delta", "attention-weighted feature-map distance (Li et al., ICLR 2019)")
def _delta(cfg: PenaltyConfig, ctx: PenaltyContext) -> BasePenalty:
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
