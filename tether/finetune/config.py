"""Typed, validated configuration: dicts (YAML, JSON, ``--set``) -> frozen dataclasses.

Every section of a recipe is a frozen dataclass that lives next to the component it
configures and validates its own values in ``__post_init__``. This module does the generic
part once: unknown keys, wrong types and bad choices are reported with the dotted key, the
value and what is allowed, e.g. ``train.epochs must be an integer, got 'ten'``.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
import contextlib
import dataclasses
import types
import typing
from typing import Any
from typing import Literal
from typing import TypeVar
from typing import Union

import yaml

from tether.errors import ConfigError
from tether.jsondata import deep_copy
from tether.jsondata import json_safe


T = TypeVar("T")


def from_dict(cls: type[T], data: object, *, prefix: str = "") -> T:
    """Build the dataclass ``cls`` from ``data``, checking every key and value.

    Args:
        cls: a (frozen) dataclass whose field annotations say what each key accepts.
        data: a mapping from field names to values, as read from YAML or JSON.
        prefix: the dotted path of ``data`` in the whole recipe, for messages.
    """
    where = prefix.rstrip(".") or "the recipe"
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping of keys to values, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]}; {where} accepts {', '.join(sorted(fields))}"
        )
    values = {key: _convert(hints[key], value, f"{prefix}{key}") for key, value in data.items()}
    try:
        return cls(**values)
    except TypeError as error:  # a required field is missing
        raise ConfigError(f"{where}: {error}") from None


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, prefix=f"{key}.")  # type: ignore[arg-type]
    if origin in (Union, types.UnionType):
        return _convert_union(args, value, key)
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{key} must be one of {choices}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, Sequence) or isinstance(value, str):
            value = [value]
        return tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return {str(k): _convert(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    return _convert_scalar(tp, value, key)


def _convert_union(args: tuple[Any, ...], value: Any, key: str) -> Any:
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"{key} must be set, got null")
    errors: list[ConfigError] = []
    for option in args:
        if option is type(None):
            continue
        try:
            return _convert(option, value, key)
        except ConfigError as error:
            if isinstance(value, Mapping) and typing.get_origin(option) is dict:
                raise  # the value is a mapping: its own error names the bad entry
            errors.append(error)
    if len(errors) == 1:
        raise errors[0]
    raise ConfigError(f"{key} has an unusable value {value!r}")


_SCALAR_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _convert_scalar(tp: Any, value: Any, key: str) -> Any:
    if tp is float and isinstance(value, str):
        # YAML reads 1e-3 (no dot) and inf as strings; accept them as numbers.
        with contextlib.suppress(ValueError):
            value = float(value)
    ok = (
        (tp is bool and isinstance(value, bool))
        or (tp is int and isinstance(value, int) and not isinstance(value, bool))
        or (tp is float and isinstance(value, int | float) and not isinstance(value, bool))
        or (tp is str and isinstance(value, str))
    )
    if not ok:
        raise ConfigError(f"{key} must be {_SCALAR_NAMES.get(tp, tp)}, got {value!r}")
    return float(value) if tp is float else value


def to_dict(config: object) -> dict[str, Any]:
    """A JSON- and YAML-safe dict of a config dataclass (``inf`` becomes the string "inf",
    as :func:`~tether.jsondata.json_safe` has it)."""
    return typing.cast(dict[str, Any], json_safe(dataclasses.asdict(config)))  # type: ignore[call-overload]


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.epochs=2"`` -> ``(["train", "epochs"], 2)``; the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(f"--set {key}: cannot read value {raw!r}") from None
    return key.strip().split("."), value


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``data`` with each ``dotted.key=value`` set (intermediate mappings created)."""
    out: dict[str, Any] = deep_copy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text}: {'.'.join(path[: i + 1])} is not a section")
            node = child
        node[path[-1]] = value
    return out


def read_yaml(path: str) -> dict[str, Any]:
    """Read a YAML mapping with ``yaml.safe_load``; any problem is a one-line ConfigError."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except FileNotFoundError:
        raise ConfigError(f"recipe {path} does not exist") from None
    except OSError as error:
        raise ConfigError(f"cannot read recipe {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise ConfigError(f"recipe {path} is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"recipe {path} must be a mapping of sections, got {type(data).__name__}"
        )
    return data
