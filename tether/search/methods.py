"""The methods a study compares, as data, and how a trial's parameters become a recipe patch.

A method is a name, one line of description, a recipe *patch* that fixes the method (a nested
dict deep-merged into the base recipe) and the names of the search parameters it accepts. Every
parameter has one stable Optuna name and one place in the recipe::

    parameter      recipe key                methods
    lr             train.lr                  all
    radius         constraint.radius         constraint methods (the base with geometric)
    radius.<g>     constraint.radius.<g>     constraint methods, groups: independent
    scale          constraint.scale          constraint methods, groups: geometric
    head_radius    constraint.head_radius    constraint methods
    norm           constraint.norm           pgm (categorical over mars, frob)
    alpha          penalty.alpha             penalty methods (the pretrained layers; BSS: eta)
    beta           penalty.beta              penalty methods (the new head; not BSS)
    correct_epoch  train.correct_epoch       rsl (integer: the epoch label correction starts)
    correct_threshold  train.correct_threshold   rsl (relabel above this confidence)
    reweight_epoch train.reweight_epoch      rsl (integer: the epoch reweighting starts)
    reweight_temperature  train.reweight_temperature  rsl (T0 of the weights' softmax)

Constraint methods also take three fixed (not searched) options: ``groups`` (how the pretrained
groups share radii: ``shared`` = one radius for all, as in the MARS-PGM paper; ``independent``
= one parameter per group; ``geometric`` = ``radius * scale**depth``, Li & Zhang, NeurIPS 2021),
and ``relative`` and ``mode``, passed straight into the recipe's ``constraint`` section.

A new method is one ``@register_method`` function here; nothing else changes.

Example:
    >>> import optuna
    >>> from tether.search.space import FloatRange, MethodSpace
    >>> space = MethodSpace(
    ...     method="mars-pgm",
    ...     params={"radius": FloatRange(0.01, 2.0), "head_radius": FloatRange(0.5, 30.0)},
    ... )
    >>> trial = optuna.create_study().ask()
    >>> sorted(suggest("mars-pgm", space, trial, groups=["block1"])["constraint"])
    ['head_radius', 'norm', 'radius', 'scale']
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
import math
from typing import TYPE_CHECKING
from typing import Any
from typing import Literal

from tether.errors import ConfigError


if TYPE_CHECKING:
    import optuna

    from tether.search.space import MethodSpace


Patch = dict[str, Any]
GroupMode = Literal["shared", "independent", "geometric"]
GROUP_MODES: tuple[GroupMode, ...] = ("shared", "independent", "geometric")
NORMS = ("mars", "frob")

PARAM_PATHS: dict[str, tuple[str, str]] = {
    "lr": ("train", "lr"),
    "radius": ("constraint", "radius"),
    "scale": ("constraint", "scale"),
    "head_radius": ("constraint", "head_radius"),
    "norm": ("constraint", "norm"),
    "alpha": ("penalty", "alpha"),
    "beta": ("penalty", "beta"),
    "correct_epoch": ("train", "correct_epoch"),
    "correct_threshold": ("train", "correct_threshold"),
    "reweight_epoch": ("train", "reweight_epoch"),
    "reweight_temperature": ("train", "reweight_temperature"),
}
"""Where each search parameter lands in the recipe (``radius.<group>``: under ``radius``)."""

INT_PARAMS = frozenset({"correct_epoch", "reweight_epoch"})
"""Parameters that are integers (a range of them is sampled with ``suggest_int``)."""

GROUP_PREFIX = "radius."
CONSTRAINT_OPTIONS = ("groups", "relative", "mode")


@dataclass(frozen=True)
class Method:
    """One method a study can compare.

    Attributes:
        name: the registry name, also the second half of the study name ``<spec>/<method>``.
        description: one line for listings and reports.
        patch: the recipe patch that fixes the method (deep-merged into the base recipe).
        params: the search parameters it accepts, in the order they are suggested.
        required: the parameters a study spec must give a range for.
        options: the fixed options it accepts (``groups``, ``relative``, ``mode``).
    """

    name: str
    description: str
    patch: Mapping[str, Any]
    params: tuple[str, ...]
    required: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    @property
    def constrained(self) -> bool:
        """Whether the method projects onto radii (and so takes the ``groups`` layouts)."""
        return "radius" in self.params

    def accepts(self, key: str, groups: GroupMode) -> bool:
        """Whether ``key`` is a search parameter of this method under the ``groups`` layout."""
        if key == "scale":
            return self.constrained and groups == "geometric"
        if key.startswith(GROUP_PREFIX):
            return self.constrained and groups == "independent" and len(key) > len(GROUP_PREFIX)
        return key in self.params

    def describe_params(self) -> str:
        """The accepted parameter names, for error messages."""
        names = [p for p in self.params if p != "scale"]
        if self.constrained:
            names += ["radius.<group> (groups: independent)", "scale (groups: geometric)"]
        return ", ".join(names)

    def required_params(self, groups: GroupMode) -> tuple[str, ...]:
        """The parameters that need a range under the ``groups`` layout."""
        extra = ("scale",) if self.constrained and groups == "geometric" else ()
        return (*self.required, *extra)


_METHODS: dict[str, Method] = {}


def register_method(factory: Callable[[], Method]) -> Callable[[], Method]:
    """Register the method that ``factory`` describes (its name must be new)."""
    method = factory()
    if method.name in _METHODS:
        raise ValueError(f"method {method.name!r} is already registered")
    unknown = [p for p in method.params if p not in PARAM_PATHS]
    if unknown:
        raise ValueError(f"method {method.name!r} names unknown parameter {unknown[0]!r}")
    _METHODS[method.name] = method
    return factory


def list_methods() -> list[str]:
    """The registered method names, sorted."""
    return sorted(_METHODS)


def get_method(name: str) -> Method:
    """The method registered as ``name``; a :class:`ConfigError` lists the valid names."""
    try:
        return _METHODS[name]
    except KeyError:
        raise ConfigError(
            f"unknown method {name!r}; choose from {', '.join(list_methods())}"
        ) from None


_UNCONSTRAINED: Patch = {
    "norm": "none",
    "radius": math.inf,
    "head_radius": math.inf,
    "scale": None,
}
_CONSTRAINT_PARAMS = ("radius", "scale", "head_radius", "lr")
_PENALTY_PARAMS = ("alpha", "beta", "lr")


_RSL_PARAMS = ("correct_epoch", "correct_threshold", "reweight_epoch", "reweight_temperature")
_NO_RELABELLING: Patch = {"correct_epoch": 0, "reweight_epoch": 0}
"""Every method but ``rsl`` trains on the given labels, whatever the base recipe says."""


def _constraint(name: str, description: str, norm: str | None) -> Method:
    fixed: Patch = {} if norm is None else {"norm": norm}
    params = _CONSTRAINT_PARAMS if norm is not None else ("norm", *_CONSTRAINT_PARAMS)
    required = ("radius", "head_radius") if norm is not None else ("norm", "radius", "head_radius")
    return Method(
        name,
        description,
        patch={
            "constraint": fixed,
            "penalty": {"name": "none"},
            "train": dict(_NO_RELABELLING),
        },
        params=params,
        required=required,
        options=CONSTRAINT_OPTIONS,
    )


def _penalty(name: str, description: str, params: tuple[str, ...] = _PENALTY_PARAMS) -> Method:
    return Method(
        name,
        description,
        patch={
            "constraint": dict(_UNCONSTRAINED),
            "penalty": {"name": name},
            "train": dict(_NO_RELABELLING),
        },
        params=params,
        required=tuple(p for p in ("alpha", "beta") if p in params),
    )


@register_method
def _standard() -> Method:
    """Standard fine-tuning: no constraint, no penalty."""
    return Method(
        "standard",
        "standard fine-tuning: no constraint, no penalty",
        patch={
            "constraint": dict(_UNCONSTRAINED),
            "penalty": {"name": "none"},
            "train": dict(_NO_RELABELLING),
        },
        params=("lr",),
    )


@register_method
def _mars_pgm() -> Method:
    """MARS-PGM (Gouk, Hospedales, Pontil, ICLR 2021): the MARS-norm ball around W0."""
    return _constraint("mars-pgm", "MARS-norm ball around the pretrained weights (PGM)", "mars")


@register_method
def _frob_pgm() -> Method:
    """l2-PGM (the MARS paper's Frobenius variant; RSL, NeurIPS 2021, uses it per layer)."""
    return _constraint("frob-pgm", "Frobenius ball around the pretrained weights (PGM)", "frob")


@register_method
def _pgm() -> Method:
    """PGM with the norm itself searched (categorical ``norm`` over mars, frob)."""
    return _constraint("pgm", "distance ball around the pretrained weights, norm searched", None)


@register_method
def _mars_sp() -> Method:
    """MARS-SP: the MARS norm as a penalty (Gouk et al. 2021)."""
    return _penalty("mars-sp", "MARS-norm distance to the pretrained weights as a penalty")


@register_method
def _l2_sp() -> Method:
    """L2-SP (Li, Grandvalet, Davoine, ICML 2018)."""
    return _penalty("l2-sp", "squared l2 distance to the pretrained weights as a penalty")


@register_method
def _frob_sp() -> Method:
    """The MARS code's ``frob`` penalty (squared Frobenius per layer, no 1/2)."""
    return _penalty("frob-sp", "squared Frobenius distance per layer as a penalty")


@register_method
def _delta() -> Method:
    """DELTA (Li et al., ICLR 2019): attention-weighted feature-map distance."""
    return _penalty("delta", "attention-weighted feature-map distance to the pretrained network")


@register_method
def _l1_sp() -> Method:
    """L1-SP (Li, Grandvalet, Davoine, ICML 2018, the authors' wd_mode 4)."""
    return _penalty("l1-sp", "l1 distance to the pretrained weights as a penalty")


@register_method
def _l2_sp_fisher() -> Method:
    """L2-SP-Fisher: L2-SP weighted by the source task's diagonal Fisher information."""
    return _penalty(
        "l2-sp-fisher", "L2-SP weighted by the pretrained network's Fisher information"
    )


@register_method
def _bss() -> Method:
    """Batch Spectral Shrinkage (Chen et al., NeurIPS 2019): ``alpha`` is its trade-off eta."""
    return _penalty(
        "bss", "shrinks the smallest singular values of the batch features", ("alpha", "lr")
    )


@register_method
def _rsl() -> Method:
    """RSL (Li & Zhang, NeurIPS 2021): layer-wise Frobenius radii, label correction, reweighting.

    The patch holds the paper's ResNet-18 noisy-label settings (reweighting from epoch 5 at
    temperature 2, correction from epoch 10 above 0.9); a spec searches any of the four.
    """
    base = _constraint("rsl", "", "frob")
    return Method(
        "rsl",
        "Frobenius radii + self label-correction + sample reweighting (NeurIPS 2021)",
        patch={
            **base.patch,
            "train": {
                "correct_epoch": 10,
                "correct_threshold": 0.9,
                "reweight_epoch": 5,
                "reweight_temperature": 2.0,
            },
        },
        params=(*base.params, *_RSL_PARAMS),
        required=base.required,
        options=base.options,
    )


def deep_merge(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict: ``base`` with ``patch`` merged in, mapping into mapping, recursively.

    A value of ``patch`` that is not a mapping (or lands on one that is not) replaces the
    value of ``base``; neither argument is modified.

    Example:
        >>> deep_merge({"train": {"lr": 1e-3, "epochs": 9}}, {"train": {"lr": 0.1}})
        {'train': {'lr': 0.1, 'epochs': 9}}
    """
    out = {k: _copy(v) for k, v in base.items()}
    for key, value in patch.items():
        old = out.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            out[key] = deep_merge(old, value)
        else:
            out[key] = _copy(value)
    return out


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def suggest(
    method: str | Method,
    space: MethodSpace,
    trial: optuna.trial.BaseTrial,
    *,
    groups: Sequence[str],
) -> Patch:
    """Sample one trial's parameters and return the recipe patch for it.

    The patch is the method's fixed patch, the fixed options of ``space`` and the sampled
    values, under the stable parameter names of this module's table.

    Args:
        method: a registered method, or its name.
        space: the method's search space from the study spec.
        trial: an Optuna trial (``study.ask()``, a trial in ``optimize``, or a ``FixedTrial``).
        groups: the model's pretrained layer groups, input side first, without the head
            (``LayerGroups.extractor``); only ``groups: independent`` needs them (the recipe
            applies a ``geometric`` schedule to the model's groups itself).

    Returns:
        A nested dict to :func:`deep_merge` into the base recipe.
    """
    info = get_method(method) if isinstance(method, str) else method
    patch = _copy(dict(info.patch))
    constraint: Patch = patch.setdefault("constraint", {})
    if info.constrained:
        if space.relative is not None:
            constraint["relative"] = space.relative
        if space.mode is not None:
            constraint["mode"] = space.mode
        constraint.update(_radii(space, trial, groups))
    for name in info.params:
        if name in ("radius", "scale") or name not in space.params:
            continue
        section, key = PARAM_PATHS[name]
        patch.setdefault(section, {})[key] = space.params[name].suggest(trial, name)
    return patch


def _radii(space: MethodSpace, trial: optuna.trial.BaseTrial, groups: Sequence[str]) -> Patch:
    params = space.params
    if space.groups == "shared":
        return {"radius": params["radius"].suggest(trial, "radius"), "scale": None}
    if space.groups == "geometric":
        base = params["radius"].suggest(trial, "radius")
        return {"radius": base, "scale": params["scale"].suggest(trial, "scale")}
    check_group_names(space, groups)
    radii = {}
    for group in groups:
        name = GROUP_PREFIX + group
        radii[group] = params.get(name, params["radius"]).suggest(trial, name)
    return {"radius": radii, "scale": None}


def check_group_names(space: MethodSpace, groups: Sequence[str]) -> None:
    """Raise :class:`ConfigError` if ``radius.<group>`` keys name a group the model lacks."""
    if space.groups != "independent":
        return
    if not groups:
        raise ConfigError("groups: independent needs the model's layer groups, got none")
    named = [
        k
        for k in (*space.params, *(k for p in space.enqueue for k in p))
        if k.startswith(GROUP_PREFIX)
    ]
    unknown = [k for k in named if k[len(GROUP_PREFIX) :] not in groups]
    if unknown:
        raise ConfigError(
            f"methods.{space.method}.{unknown[0]} names no layer group of the model; "
            f"its groups are {', '.join(groups)}"
        )


def enqueue_params(
    space: MethodSpace, point: Mapping[str, Any], *, groups: Sequence[str]
) -> dict[str, Any]:
    """The Optuna parameters of one enqueued point (for ``study.enqueue_trial``).

    With ``groups: independent`` a point may give ``radius``, meaning that radius for every
    group without its own ``radius.<group>`` entry; it becomes one ``radius.<group>`` per
    group. Every other layout passes the point through unchanged.
    """
    params = dict(point)
    if space.groups != "independent":
        return params
    check_group_names(space, groups)
    shared = params.pop("radius", None)
    if shared is not None:
        for group in groups:
            params.setdefault(GROUP_PREFIX + group, shared)
    return params
