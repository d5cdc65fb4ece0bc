"""Search spaces: the parameter ranges of a study spec, and one method's space.

A parameter is a float range ``{low, high, log}`` (:class:`FloatRange`), an integer range
(:class:`IntRange`, for the parameters :data:`tether.search.methods.INT_PARAMS` names: epochs)
or a list of choices (:class:`Choice`); all three are a :class:`Param`, which samples itself
into an Optuna trial, as Optuna's distributions and Ray Tune's domains do. A
:class:`MethodSpace` is one entry of a spec's ``methods:`` (read and checked by
:func:`method_spaces`): it samples a whole trial into a recipe patch, under the stable
parameter names of :mod:`tether.search.methods`.

Example:
    >>> import optuna
    >>> space = MethodSpace(
    ...     method="mars-pgm",
    ...     params={"radius": FloatRange(0.01, 2.0), "head_radius": FloatRange(0.5, 30.0)},
    ... )
    >>> trial = optuna.create_study().ask()
    >>> sorted(space.suggest(trial, groups=["block1"])["constraint"])
    ['head_radius', 'learn', 'norm', 'radius', 'scale']
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
import math
from typing import TYPE_CHECKING
from typing import Any
from typing import Literal

from tether.errors import ConfigError
from tether.finetune.config import from_dict
from tether.finetune.regularizers.config import NORMS
from tether.jsondata import deep_copy
from tether.jsondata import json_safe
from tether.search.methods import CONSTRAINT_OPTIONS
from tether.search.methods import GROUP_PREFIX
from tether.search.methods import INT_PARAMS
from tether.search.methods import PARAM_PATHS
from tether.search.methods import SPACE_OPTIONS
from tether.search.methods import GroupMode
from tether.search.methods import Patch
from tether.search.methods import get_method
from tether.search.methods import list_methods


if TYPE_CHECKING:
    import optuna


ChoiceValue = str | int | float | bool | None


class Param(abc.ABC):
    """A searched parameter's domain: what it samples, holds, and reads back as YAML."""

    @abc.abstractmethod
    def suggest(self, trial: optuna.trial.BaseTrial, name: str) -> Any:
        """Sample the value of parameter ``name`` for ``trial``."""

    @abc.abstractmethod
    def contains(self, value: object) -> bool:
        """Whether ``value`` is in the domain."""

    @abc.abstractmethod
    def ends(self) -> tuple[Any, Any]:
        """The two extreme values (probed when the spec loads)."""

    @abc.abstractmethod
    def nearest(self, value: float) -> Any:
        """The value of the domain nearest to the number ``value`` (itself when inside)."""

    @abc.abstractmethod
    def describe(self) -> str:
        """The domain in words, for messages."""

    @abc.abstractmethod
    def to_data(self) -> Any:
        """The YAML form."""


@dataclass(frozen=True)
class _Range(Param):
    """Numbers from ``low`` to ``high``, log-uniform when ``log``."""

    low: Any
    high: Any
    log: bool

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ConfigError(f"low must be < high, got low={self.low!r}, high={self.high!r}")
        if self.log and not self.low > 0:
            raise ConfigError(
                f"low must be > 0 on a log scale (or set log: false), got {self.low!r}"
            )

    def ends(self) -> tuple[Any, Any]:
        return self.low, self.high

    def to_data(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "log": self.log}


@dataclass(frozen=True)
class FloatRange(_Range):
    """A float parameter between ``low`` and ``high``, log-uniform unless ``log`` is false."""

    low: float
    high: float
    log: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ConfigError(f"low and high must be finite, got {self.low!r}, {self.high!r}")
        super().__post_init__()

    def suggest(self, trial: optuna.trial.BaseTrial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def contains(self, value: object) -> bool:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return number and self.low <= value <= self.high  # type: ignore[operator]

    def nearest(self, value: float) -> float:
        return min(max(float(value), self.low), self.high)

    def describe(self) -> str:
        return f"[{self.low!r}, {self.high!r}]{' (log)' if self.log else ''}"


@dataclass(frozen=True)
class IntRange(_Range):
    """An integer parameter from ``low`` to ``high`` inclusive (uniform unless ``log``)."""

    low: int
    high: int
    log: bool = False

    def suggest(self, trial: optuna.trial.BaseTrial, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, log=self.log)

    def contains(self, value: object) -> bool:
        integer = isinstance(value, int) and not isinstance(value, bool)
        return integer and self.low <= value <= self.high  # type: ignore[operator]

    def nearest(self, value: float) -> int:
        return min(max(round(value), self.low), self.high)

    def describe(self) -> str:
        return f"integers [{self.low!r}, {self.high!r}]{' (log)' if self.log else ''}"


@dataclass(frozen=True)
class Choice(Param):
    """A categorical parameter: one of ``choices``."""

    choices: tuple[ChoiceValue, ...]

    def __post_init__(self) -> None:
        if not self.choices:
            raise ConfigError("a list of choices must not be empty")
        for value in self.choices:
            if value is not None and not isinstance(value, str | int | float | bool):
                raise ConfigError(f"choices must be numbers or strings, got {value!r}")
        if len(set(self.choices)) != len(self.choices):
            raise ConfigError(f"choices must not repeat, got {list(self.choices)!r}")

    def suggest(self, trial: optuna.trial.BaseTrial, name: str) -> ChoiceValue:
        return trial.suggest_categorical(name, list(self.choices))

    def contains(self, value: object) -> bool:
        return value in self.choices

    def nearest(self, value: float) -> ChoiceValue:
        """The numeric choice nearest to ``value`` (a list of radii, say)."""
        numbers = [c for c in self.choices if type(c) in (int, float)]
        return min(numbers, key=lambda c: abs(c - value))  # type: ignore[operator]

    def ends(self) -> tuple[ChoiceValue, ChoiceValue]:
        """The first and last choices (every choice is probed when the spec loads)."""
        return self.choices[0], self.choices[-1]

    def describe(self) -> str:
        return "one of " + ", ".join(repr(c) for c in self.choices)

    def to_data(self) -> list[ChoiceValue]:
        return list(self.choices)


@dataclass(frozen=True)
class MethodSpace:
    """One method's entry under ``methods:``: its search space, fixed options, first points.

    Attributes:
        method: the registered method name.
        params: the searched parameters by stable name (``radius``, ``radius.layer1``, ...).
        groups: how pretrained layer groups share radii (constraint methods).
        relative: ``constraint.relative`` for the trials; ``None`` keeps the recipe's.
        mode: ``constraint.mode`` for the trials; ``None`` keeps the recipe's.
        enqueue: known-good points, tried before the sampler proposes any.
        wise: WiSE-FT after training, its coefficient chosen on val (``train.wise: val``).
        warm_start: the method of the spec whose learned radii make the first trial
            (:mod:`tether.search.warm_start`); a starting point, like ``enqueue``.
    """

    method: str
    params: dict[str, Param] = field(default_factory=dict)
    groups: GroupMode = "shared"
    relative: bool | None = None
    mode: Literal["rescale", "exact"] | None = None
    enqueue: tuple[dict[str, Any], ...] = ()
    wise: bool = False
    warm_start: str | None = None

    def param_for(self, name: str) -> Param | None:
        """The range of Optuna parameter ``name`` (``radius.<g>`` falls back on ``radius``)."""
        if name in self.params:
            return self.params[name]
        if self.groups == "independent" and name.startswith(GROUP_PREFIX):
            return self.params.get("radius")
        return None

    def trial_params(self, groups: Sequence[str]) -> dict[str, Param]:
        """Every Optuna parameter a trial suggests, with its range, for a model's ``groups``."""
        if self.groups != "independent":
            return dict(self.params)
        names = {
            k: p
            for k, p in self.params.items()
            if k != "radius" and not k.startswith(GROUP_PREFIX)
        }
        for group in groups:
            names[GROUP_PREFIX + group] = self.params.get(
                GROUP_PREFIX + group, self.params["radius"]
            )
        return names

    def suggest(self, trial: optuna.trial.BaseTrial, *, groups: Sequence[str]) -> Patch:
        """Sample one trial's parameters and return the recipe patch for it.

        The patch is the method's fixed patch, this space's fixed options and the sampled
        values, each at its place in the recipe (:data:`tether.search.methods.PARAM_PATHS`).

        Args:
            trial: an Optuna trial (``study.ask()``, a trial in ``optimize``, a ``FixedTrial``).
            groups: the model's pretrained layer groups, input side first, without the head;
                only ``groups: independent`` needs them (the recipe applies a ``geometric``
                schedule to the model's groups itself).

        Returns:
            A nested dict to :func:`~tether.jsondata.deep_merge` into the base recipe.
        """
        info = get_method(self.method)
        patch: Patch = deep_copy(dict(info.patch))
        constraint: Patch = patch.setdefault("constraint", {})
        if info.constrained:
            if self.relative is not None:
                constraint["relative"] = self.relative
            if self.mode is not None:
                constraint["mode"] = self.mode
            constraint.update(self._radii(trial, groups))
        if self.wise:
            patch.setdefault("train", {})["wise"] = "val"
        for name in info.params:
            if name in ("radius", "scale") or name not in self.params:
                continue
            section, key = PARAM_PATHS[name]
            patch.setdefault(section, {})[key] = self.params[name].suggest(trial, name)
        return patch

    def _radii(self, trial: optuna.trial.BaseTrial, groups: Sequence[str]) -> Patch:
        params = self.params
        if self.groups == "shared":
            return {"radius": params["radius"].suggest(trial, "radius"), "scale": None}
        if self.groups == "geometric":
            base = params["radius"].suggest(trial, "radius")
            return {"radius": base, "scale": params["scale"].suggest(trial, "scale")}
        self.check_group_names(groups)
        radii = {}
        for group in groups:
            name = GROUP_PREFIX + group
            radii[group] = params.get(name, params["radius"]).suggest(trial, name)
        return {"radius": radii, "scale": None}

    def check_group_names(self, groups: Sequence[str]) -> None:
        """Raise :class:`ConfigError` if ``radius.<group>`` keys name a group the model lacks."""
        if self.groups != "independent":
            return
        if not groups:
            raise ConfigError("groups: independent needs the model's layer groups, got none")
        named = [
            k
            for k in (*self.params, *(k for p in self.enqueue for k in p))
            if k.startswith(GROUP_PREFIX)
        ]
        unknown = [k for k in named if k[len(GROUP_PREFIX) :] not in groups]
        if unknown:
            raise ConfigError(
                f"methods.{self.method}.{unknown[0]} names no layer group of the model; "
                f"its groups are {', '.join(groups)}"
            )

    def enqueue_params(self, point: Mapping[str, Any], *, groups: Sequence[str]) -> dict[str, Any]:
        """The Optuna parameters of one enqueued point (for ``study.enqueue_trial``).

        With ``groups: independent`` a point may give ``radius``, meaning that radius for every
        group without its own ``radius.<group>`` entry; it becomes one ``radius.<group>`` per
        group. Every other layout passes the point through unchanged.
        """
        params = dict(point)
        if self.groups != "independent":
            return params
        self.check_group_names(groups)
        shared = params.pop("radius", None)
        if shared is not None:
            for group in groups:
                params.setdefault(GROUP_PREFIX + group, shared)
        return params

    def to_data(self, *, enqueue: bool = True) -> dict[str, Any]:
        """The YAML form (JSON-safe); without the starting points unless ``enqueue``."""
        data: dict[str, Any] = {}
        if get_method(self.method).constrained:
            data["groups"] = self.groups
        if self.relative is not None:
            data["relative"] = self.relative
        if self.mode is not None:
            data["mode"] = self.mode
        if self.wise:
            data["wise"] = True
        data.update({name: param.to_data() for name, param in self.params.items()})
        if enqueue and self.enqueue:
            data["enqueue"] = json_safe(list(self.enqueue))
        if enqueue and self.warm_start is not None:
            data["warm_start"] = self.warm_start
        return data


_RANGE_KEYS = {"low", "high", "log"}


@dataclass(frozen=True)
class _Options:
    groups: GroupMode = "shared"
    relative: bool | None = None
    mode: Literal["rescale", "exact"] | None = None
    enqueue: tuple[dict[str, Any], ...] = ()
    wise: bool = False
    warm_start: str | None = None


def method_spaces(data: object) -> dict[str, MethodSpace]:
    """The ``methods:`` of a study spec, each method's entry checked and read into its space.

    Raises:
        ConfigError: naming the dotted key (``methods.mars-pgm.radius.high``), the value and
            what is allowed.
    """
    if not isinstance(data, Mapping) or not data:
        raise ConfigError(f"methods must map method names to search spaces, got {data!r}")
    spaces = {}
    for name, space in data.items():
        try:
            get_method(str(name))
        except ConfigError as error:
            raise ConfigError(f"methods.{name}: {error}") from None
        spaces[str(name)] = _space(str(name), space)
    return spaces


def _space(name: str, data: object) -> MethodSpace:
    key = f"methods.{name}"
    method = get_method(name)
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{key} must be a mapping of parameters and options, got {data!r}")
    option_keys = {k for k in data if k in (*method.options, *SPACE_OPTIONS)}
    misplaced = [k for k in data if k in CONSTRAINT_OPTIONS and k not in option_keys]
    if misplaced:
        raise ConfigError(
            f"{key}.{misplaced[0]}: {name} searches no radii, so it takes none of "
            f"{', '.join(CONSTRAINT_OPTIONS)}"
        )
    options = from_dict(_Options, {k: data[k] for k in option_keys}, prefix=f"{key}.")
    params = {}
    for param, value in data.items():
        if param in option_keys:
            continue
        if not method.accepts(str(param), options.groups):
            raise ConfigError(
                f"{key}.{param} is not a parameter of {name} with groups: {options.groups}; "
                f"{name} accepts {method.describe_params()}"
            )
        params[str(param)] = _param(f"{key}.{param}", str(param), value)
    missing = [p for p in method.required_params(options.groups) if p not in params]
    if missing:
        raise ConfigError(
            f"{key}.{missing[0]} is required: give a range {{low, high}} or a list of choices"
        )
    space = MethodSpace(
        name,
        params,
        options.groups,
        options.relative,
        options.mode,
        options.enqueue,
        wise=options.wise,
        warm_start=options.warm_start,
    )
    for i, point in enumerate(space.enqueue):
        _check_point(space, point, f"{key}.enqueue[{i}]")
    _check_warm_start(space, f"{key}.warm_start")
    return space


def _param(key: str, name: str, value: object) -> Param:
    if name == "norm":
        ok = isinstance(value, list) and bool(value) and all(v in NORMS for v in value)
        if not ok:
            raise ConfigError(
                f"{key} must be a list of norms from {', '.join(NORMS)}, got {value!r}"
            )
    if isinstance(value, Mapping) and {"low", "high"} - set(value) and set(value) <= _RANGE_KEYS:
        raise ConfigError(f"{key} needs both low and high, got {dict(value)!r}")
    try:
        if isinstance(value, list):
            return Choice(tuple(value))
        if isinstance(value, Mapping) and name in INT_PARAMS:
            return from_dict(IntRange, value, prefix=f"{key}.")
        if isinstance(value, Mapping):
            return from_dict(FloatRange, value, prefix=f"{key}.")
    except ConfigError as error:
        message = str(error)
        raise ConfigError(message if key in message else f"{key}: {message}") from None
    raise ConfigError(
        f"{key} must be a range {{low, high, log}} or a list of choices, got {value!r}"
    )


def _check_warm_start(space: MethodSpace, where: str) -> None:
    """A warm start names a method that learns MARS radii, for a space that searches them.

    The spec checks that the method is one of its own (:func:`tether.search.spec.spec_from_dict`).
    """
    if space.warm_start is None:
        return
    try:
        source = get_method(space.warm_start)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    if not source.learns_radii:
        learners = ", ".join(m for m in list_methods() if get_method(m).learns_radii)
        raise ConfigError(
            f"{where}: {space.warm_start} learns no radii to start from; name one of {learners}"
        )
    searched = space.params.get("norm")  # pgm's: a Choice, checked by _param
    fixed = get_method(space.method).patch["constraint"].get("norm")
    norms = searched.choices if isinstance(searched, Choice) else (fixed,)
    if "mars" not in norms:
        raise ConfigError(
            f"{where}: {space.warm_start} learns MARS radii, but {space.method} measures "
            f"{', '.join(map(str, norms))} distances"
        )


def _check_point(space: MethodSpace, point: Mapping[str, Any], where: str) -> None:
    for name, value in point.items():
        param = space.param_for(name)
        if param is None:
            raise ConfigError(
                f"{where}.{name} is not searched by {space.method}; "
                f"searched: {', '.join(space.params)}"
            )
        if not param.contains(value):
            raise ConfigError(f"{where}.{name} is {value!r}; allowed: {param.describe()}")


def format_params(params: Mapping[str, Any]) -> str:
    """A trial's parameters on one line, floats to 4 significant digits (logs and tables).

    Example:
        >>> format_params({"radius": 0.123456, "norm": "mars", "proj_freq": 2})
        'radius=0.1235, norm=mars, proj_freq=2'
    """
    return ", ".join(
        f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"
        for name, value in params.items()
    )
