"""The one exception type that means "the user gave us something we cannot use"."""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad input: a recipe value, a dataset folder, a model name, a checkpoint.

    The worker and the CLI turn it into one line on stderr and exit code 2, with no traceback.
    ``kind`` says which part of the input was wrong (``config``, ``data``, ``model``,
    ``checkpoint``), so that a harness can tell a bad trial from a crash.

    Example:
        >>> raise ConfigError("train.epochs must be >= 1, got 0")
        Traceback (most recent call last):
        ...
        tether.errors.ConfigError: train.epochs must be >= 1, got 0
    """

    def __init__(self, message: str, *, kind: str = "config") -> None:
        super().__init__(message)
        self.kind = kind
