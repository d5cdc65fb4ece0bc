"""JSON-like data: copy, merge, strict-JSON floats, digests."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from tether.jsondata import deep_copy
from tether.jsondata import deep_merge
from tether.jsondata import json_digest
from tether.jsondata import json_safe


def test_deep_merge_is_nested_and_leaves_its_arguments_alone() -> None:
    base = {"a": {"b": 1, "c": {"d": 2}}, "e": [1, 2]}
    patch = {"a": {"c": {"d": 3, "f": 4}}, "g": 5}
    merged = deep_merge(base, patch)
    assert merged == {"a": {"b": 1, "c": {"d": 3, "f": 4}}, "e": [1, 2], "g": 5}
    assert base == {"a": {"b": 1, "c": {"d": 2}}, "e": [1, 2]}
    assert patch == {"a": {"c": {"d": 3, "f": 4}}, "g": 5}
    merged["e"].append(3)
    assert base["e"] == [1, 2]


def test_deep_merge_replaces_a_scalar_by_a_mapping_and_back() -> None:
    assert deep_merge({"r": 0.1}, {"r": {"x": 1.0}}) == {"r": {"x": 1.0}}
    assert deep_merge({"r": {"x": 1.0}}, {"r": 0.5}) == {"r": 0.5}


def test_deep_copy_copies_mappings_and_lists_only() -> None:
    shared = object()
    data: dict[str, Any] = {"a": [{"b": 1}], "c": shared}
    copied = deep_copy(data)
    copied["a"][0]["b"] = 2
    assert data["a"][0]["b"] == 1
    assert copied["c"] is shared


def test_json_safe_writes_every_non_finite_float_as_a_string() -> None:
    value = {"a": math.inf, "b": [-math.inf, math.nan, 1.5], "c": (1, 2), 3: "three"}
    safe = json_safe(value)
    assert safe == {"a": "inf", "b": ["-inf", "nan", 1.5], "c": [1, 2], "3": "three"}
    json.dumps(safe, allow_nan=False)  # strict JSON


def test_a_digest_ignores_key_order_and_keeps_its_two_historical_forms() -> None:
    assert json_digest({"a": 1, "b": [1, 2]}) == json_digest({"b": [1, 2], "a": 1})
    # the cache keys and the stored study fingerprints of earlier versions stay valid
    assert json_digest({"a": [1, 2]}) == hashlib.sha256(b'{"a": [1, 2]}').hexdigest()
    assert json_digest({"a": [1, 2]}, compact=True) == hashlib.sha256(b'{"a":[1,2]}').hexdigest()
