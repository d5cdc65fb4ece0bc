"""The exceptions every layer shares (torch-free): bad input, and a stop from outside."""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad input: a recipe value, a dataset folder, a model name, a checkpoint.

    The worker and the CLI turn it into one line on stderr and exit code 2, with no traceback.
    ``kind`` says which part of the input was wrong (``config``, ``data``, ``model``,
    ``checkpoint``, ``storage``), so that a harness can tell a bad trial from a crash.

    Example:
        >>> raise ConfigError("train.epochs must be >= 1, got 0")
        Traceback (most recent call last):
        ...
        tether.errors.ConfigError: train.epochs must be >= 1, got 0
    """

    def __init__(self, message: str, *, kind: str = "config") -> None:
        super().__init__(message)
        self.kind = kind


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as Ctrl-C raises KeyboardInterrupt.

    The ``tether`` command installs the handler: a preemption (Kubernetes, Slurm) then stops
    a search as the first Ctrl-C does, and the command exits 143 instead of 130.
    """


def one_line(error: BaseException) -> str:
    """``error`` as ``Type: message`` on one line, for a message that quotes a library's error.

    Example:
        >>> one_line(OSError("no such file:\\n  weights.pt"))
        'OSError: no such file: weights.pt'
    """
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
