"""The penalties a recipe may name: a table that imports no torch.

Validating a recipe (``penalty.name``) reads this table alone; a penalty's builder, which
needs torch, is imported when a run builds it (:func:`build_penalty`). An entry names its
builder as ``"module:function"``, as entry points do, or holds the function itself: a penalty
of your own is one :func:`register_penalty` call with your builder, nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
import importlib
from typing import TYPE_CHECKING

from tether.registry import Registry


if TYPE_CHECKING:
    from tether.finetune.regularizers._base import BasePenalty
    from tether.finetune.regularizers._context import PenaltyContext
    from tether.finetune.regularizers.config import PenaltyConfig


Builder = Callable[["PenaltyConfig", "PenaltyContext"], "BasePenalty"]


@dataclass(frozen=True)
class PenaltyInfo:
    """A registered penalty: its name, one line for listings, and how to build it.

    ``build`` is the builder ``(config, context) -> penalty``, or its ``"module:function"``
    path, imported on first use.
    """

    name: str
    description: str
    build: Builder | str

    def builder(self) -> Builder:
        """The builder, imported if the entry names it by path."""
        if not isinstance(self.build, str):
            return self.build
        module, _, function = self.build.partition(":")
        built: Builder = getattr(importlib.import_module(module), function)
        return built


PENALTIES: Registry[PenaltyInfo] = Registry("penalty")

_BUILT_IN = "tether.finetune.regularizers._build"
for _name, _description, _function in (
    ("none", "no loss term: standard fine-tuning", "no_penalty"),
    ("l2-sp", "alpha/2 ||w - w0||^2 + beta/2 ||w_head||^2 (Li et al., ICML 2018)", "l2_sp"),
    ("frob-sp", "alpha ||W - W0||_F^2 per layer + beta ||W_head||_F^2 (MARS code)", "frob_sp"),
    (
        "mars-sp",
        "alpha sum_layers ||W - W0||_mars + beta ||W_head||_mars (Gouk et al. 2021)",
        "mars_sp",
    ),
    ("l1-sp", "alpha sum |w - w0| + beta/2 ||w_head||^2 (L1-SP, Li et al., ICML 2018)", "l1_sp"),
    (
        "l2-sp-fisher",
        "alpha/2 sum F (w - w0)^2 + beta/2 ||w_head||^2, F = source Fisher (Li et al., ICML 2018)",
        "l2_sp_fisher",
    ),
    (
        "bss",
        "alpha * k smallest squared singular values of the features (Chen et al., 2019)",
        "bss",
    ),
    ("delta", "attention-weighted feature-map distance (Li et al., ICLR 2019)", "delta"),
):
    PENALTIES.add(_name, PenaltyInfo(_name, _description, f"{_BUILT_IN}:{_function}"))


def register_penalty(name: str, description: str) -> Callable[[Builder], Builder]:
    """A decorator that registers a penalty builder under ``name`` (a new name)."""

    def decorator(build: Builder) -> Builder:
        PENALTIES.add(name, PenaltyInfo(name, description, build))
        return build

    return decorator


def list_penalties() -> list[str]:
    """The registered penalty names, sorted.

    Example:
        >>> list_penalties()[:4]
        ['bss', 'delta', 'frob-sp', 'l1-sp']
    """
    return PENALTIES.names()


def penalty_info(name: str) -> PenaltyInfo:
    """The registered penalty ``name``; a :class:`~tether.errors.ConfigError` lists the names."""
    return PENALTIES.get(name, key="penalty.name")
