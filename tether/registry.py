"""Names -> things of one kind: the one registry type behind every extension point.

Methods, samplers, pruners, penalties, local models, head adapters and layer-group rules are
each a :class:`Registry`: entries are added once under a new name (a second entry under the
same name is a programming error, as torchvision's ``register_model`` has it), and a name
read from YAML or the command line that names nothing becomes one line that lists the valid
names (a :class:`~tether.errors.ConfigError`, exit code 2). Imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterator
from typing import Generic
from typing import TypeVar

from tether.errors import ConfigError


T = TypeVar("T")


class Registry(Generic[T]):
    """Entries of one kind by name, in the order they were added.

    Args:
        kind: what an entry is, for messages (``"penalty"``, ``"sampler"``).

    Example:
        >>> samplers = Registry[int]("sampler")
        >>> samplers.add("tpe", 1)
        1
        >>> samplers.get("tpe"), "tpe" in samplers, samplers.names()
        (1, True, ['tpe'])
        >>> samplers.get("tpf", key="sampler.name")
        Traceback (most recent call last):
        ...
        tether.errors.ConfigError: sampler.name 'tpf' is not a sampler; choose from tpe
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name`` and return it.

        Raises:
            ValueError: ``name`` is taken.
        """
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """A decorator that adds the decorated object under ``name``."""
        return lambda entry: self.add(name, entry)

    def get(self, name: str, *, key: str | None = None) -> T:
        """The entry named ``name``.

        Raises:
            ConfigError: no such entry. With ``key`` (the dotted key it came from) the message
                reads ``<key> 'x' is not a <kind>; choose from ...``, without it ``unknown
                <kind> 'x'; choose from ...``.
        """
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            choices = ", ".join(self.names())
            if key is None:
                message = f"unknown {self.kind} {name!r}; choose from {choices}"
            else:
                message = f"{key} {name!r} is not a {self.kind}; choose from {choices}"
            raise ConfigError(message) from None

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def values(self) -> list[T]:
        """The entries, in the order they were added."""
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
