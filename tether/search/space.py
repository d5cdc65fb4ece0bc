"""Search spaces: the parameter ranges of a study spec and one method's space.

A parameter is a float range ``{low, high, log}`` (:class:`FloatRange`), an integer range
(:class:`IntRange`, for the parameters :data:`tether.search.methods.INT_PARAMS` names: epochs) or a
list of choices (:class:`Choice`). :class:`MethodSpace` is one entry of a spec's ``methods:``.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
import math
from typing import Any
from typing import Literal

import optuna

from tether.errors import ConfigError
from tether.search.methods import GROUP_PREFIX
from tether.search.methods import GroupMode
from tether.search.methods import get_method


ChoiceValue = str | int | float | bool | None


@dataclass(frozen=True)
class FloatRange:
    """A float parameter between ``low`` and ``high``, log-uniform unless ``log`` is false."""

    low: float
    high: float
    log: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ConfigError(f"low and high must be finite, got {self.low!r}, {self.high!r}")
        if not self.low < self.high:
            raise ConfigError(f"low must be < high, got low={self.low!r}, high={self.high!r}")
        if self.log and not self.low > 0:
            raise ConfigError(
                f"low must be > 0 on a log scale (or set log: false), got {self.low!r}"
            )

    def suggest(self, trial: optuna.trial.BaseTrial, name: str) -> float:
        """Sample the value of parameter ``name`` for ``trial``."""
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def contains(self, value: object) -> bool:
        """Whether ``value`` is a number inside the range."""
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return number and self.low <= value <= self.high  # type: ignore[operator]

    def ends(self) -> tuple[float, float]:
        """The two extreme values (probed when the spec loads)."""
        return self.low, self.high

    def describe(self) -> str:
        """The range in words, for messages."""
        return f"[{self.low!r}, {self.high!r}]{' (log)' if self.log else ''}"

    def to_data(self) -> dict[str, Any]:
        """The YAML form."""
        return {"low": self.low, "high": self.high, "log": self.log}


@dataclass(frozen=True)
class Choice:
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
        """Sample the value of parameter ``name`` for ``trial``."""
        return trial.suggest_categorical(name, list(self.choices))

    def contains(self, value: object) -> bool:
        """Whether ``value`` is one of the choices."""
        return value in self.choices

    def ends(self) -> tuple[ChoiceValue, ChoiceValue]:
        """The first and last choices (every choice is probed when the spec loads)."""
        return self.choices[0], self.choices[-1]

    def describe(self) -> str:
        """The choices in words, for messages."""
        return "one of " + ", ".join(repr(c) for c in self.choices)

    def to_data(self) -> list[ChoiceValue]:
        """The YAML form."""
        return list(self.choices)


@dataclass(frozen=True)
class IntRange:
    """An integer parameter from ``low`` to ``high`` inclusive (uniform unless ``log``)."""

    low: int
    high: int
    log: bool = False

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ConfigError(f"low must be < high, got low={self.low!r}, high={self.high!r}")
        if self.log and not self.low > 0:
            raise ConfigError(
                f"low must be > 0 on a log scale (or set log: false), got {self.low!r}"
            )

    def suggest(self, trial: optuna.trial.BaseTrial, name: str) -> int:
        """Sample the value of parameter ``name`` for ``trial``."""
        return trial.suggest_int(name, self.low, self.high, log=self.log)

    def contains(self, value: object) -> bool:
        """Whether ``value`` is an integer inside the range."""
        integer = isinstance(value, int) and not isinstance(value, bool)
        return integer and self.low <= value <= self.high  # type: ignore[operator]

    def ends(self) -> tuple[int, int]:
        """The two extreme values (probed when the spec loads)."""
        return self.low, self.high

    def describe(self) -> str:
        """The range in words, for messages."""
        return f"integers [{self.low!r}, {self.high!r}]{' (log)' if self.log else ''}"

    def to_data(self) -> dict[str, Any]:
        """The YAML form."""
        return {"low": self.low, "high": self.high, "log": self.log}


Param = FloatRange | IntRange | Choice


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
    """

    method: str
    params: dict[str, Param] = field(default_factory=dict)
    groups: GroupMode = "shared"
    relative: bool | None = None
    mode: Literal["rescale", "exact"] | None = None
    enqueue: tuple[dict[str, Any], ...] = ()

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

    def to_data(self, *, enqueue: bool = True) -> dict[str, Any]:
        """The YAML form (JSON-safe)."""
        data: dict[str, Any] = {}
        if get_method(self.method).constrained:
            data["groups"] = self.groups
        if self.relative is not None:
            data["relative"] = self.relative
        if self.mode is not None:
            data["mode"] = self.mode
        data.update({name: param.to_data() for name, param in self.params.items()})
        if enqueue and self.enqueue:
            data["enqueue"] = json_safe(list(self.enqueue))
        return data


def json_safe(value: Any) -> Any:
    """``value`` with infinite and NaN floats as strings (JSON and study attributes)."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    return value
