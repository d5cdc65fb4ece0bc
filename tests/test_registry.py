"""The registry every extension point is."""

from __future__ import annotations

import pytest

from tether.errors import ConfigError
from tether.registry import Registry


def test_a_registry_refuses_a_second_entry_and_lists_the_names_for_a_bad_one() -> None:
    things = Registry[int]("thing")
    things.register("b")(2)
    things.add("a", 1)
    assert list(things) == ["b", "a"]
    assert things.names() == ["a", "b"]
    assert things.values() == [2, 1]
    assert len(things) == 2
    with pytest.raises(ValueError, match="thing 'a' is already registered"):
        things.add("a", 3)
    with pytest.raises(ConfigError, match="unknown thing 'c'; choose from a, b"):
        things.get("c")
    with pytest.raises(ConfigError, match="x.name 'c' is not a thing; choose from a, b"):
        things.get("c", key="x.name")
