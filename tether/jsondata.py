"""JSON-like data (the dicts of recipes, specs and events): copy, merge, strict JSON, digest.

Recipes, specs, worker events and study attributes are plain nested dicts and lists. These
are the few operations every layer does on them, written once: every layer imports them from
here, and nothing here imports more than the standard library.
"""

from __future__ import annotations

from collections.abc import Mapping
import hashlib
import json
import math
from typing import Any


def deep_copy(value: Any) -> Any:
    """A copy of nested mappings and lists (as dicts and lists); other values are shared.

    Example:
        >>> recipe = {"train": {"lr": 0.1}, "data": {"classes": [5, 6]}}
        >>> copied = deep_copy(recipe)
        >>> copied["train"]["lr"] = 1.0
        >>> recipe["train"]["lr"]
        0.1
    """
    if isinstance(value, Mapping):
        return {k: deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [deep_copy(v) for v in value]
    return value


def deep_merge(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict: ``base`` with ``patch`` merged in, mapping into mapping, recursively.

    A value of ``patch`` that is not a mapping (or lands on one that is not) replaces the
    value of ``base``; neither argument is modified.

    Example:
        >>> deep_merge({"train": {"lr": 1e-3, "epochs": 9}}, {"train": {"lr": 0.1}})
        {'train': {'lr': 0.1, 'epochs': 9}}
    """
    out: dict[str, Any] = deep_copy(base)
    for key, value in patch.items():
        old = out.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            out[key] = deep_merge(old, value)
        else:
            out[key] = deep_copy(value)
    return out


def json_safe(value: Any) -> Any:
    """``value`` as strict JSON can hold it: non-finite floats become the strings ``"inf"``,
    ``"-inf"`` and ``"nan"`` (which the recipe readers accept back as floats), tuples become
    lists and mapping keys strings.

    Example:
        >>> json_safe({"radius": float("inf"), "curve": (0.5, float("nan"))})
        {'radius': 'inf', 'curve': [0.5, 'nan']}
    """
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    return value


def json_digest(value: Any, *, compact: bool = False) -> str:
    """The sha256 hex digest of ``value`` as key-sorted JSON: a cache key, a fingerprint.

    ``compact`` drops the spaces after ``,`` and ``:``: the form stored study fingerprints
    have always used (changing it would make every stored study look changed). Cache keys use
    the spaced form, which keeps existing caches valid. Pass :func:`json_safe` data where
    non-finite floats may occur and the digest must match strict JSON's.

    Example:
        >>> json_digest({"b": 1, "a": [2]}) == json_digest({"a": [2], "b": 1})
        True
        >>> json_digest({"a": 1})[:12], json_digest({"a": 1}, compact=True)[:12]
        ('f9d86028c6e0', '015abd7f5cc5')
    """
    separators = (",", ":") if compact else None
    text = json.dumps(value, sort_keys=True, separators=separators)
    return hashlib.sha256(text.encode()).hexdigest()
