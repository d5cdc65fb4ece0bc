"""Trial targets that cost nothing: what the harness's tests and benchmarks run instead of a
fine-tuning, through the same launcher, trial processes and events.

A target is what a trial process calls with its recipe: ``target(recipe, *, emit, cache_dir,
should_stop) -> exit code`` (:func:`tether.finetune.worker.execute` is the real one).
"""

from __future__ import annotations

from collections.abc import Callable
import math
import os
import signal
import sys
import time
from typing import Any

from tether.finetune.worker import EXIT_FAILED
from tether.finetune.worker import EXIT_OK
from tether.finetune.worker import EXIT_STOPPED


Emit = Callable[[dict[str, Any]], None]


FAILURES = (None, "memory", "kill", "exit")  # what the trivial target's ``fail`` may be


def trivial_accuracy(x: float, epoch: int) -> float:
    """The trivial target's validation accuracy: ``exp(-(x - 0.5)^2) * (1 - 2^-epoch)``.

    Deterministic, in [0, 1), best at ``x = 0.5`` and rising with the epoch, so a sampler has
    something to find and a pruner something to compare.
    """
    return math.exp(-((x - 0.5) ** 2)) * (1.0 - 0.5**epoch)


def trivial_target(
    recipe: dict[str, Any],
    *,
    emit: Emit,
    cache_dir: str | None,
    should_stop: Callable[[], bool],
) -> int:
    """A stand-in for a fine-tuning run that costs nothing: for tests and benchmarks.

    Reads ``recipe["epochs"]`` (default 1), ``recipe["x"]`` (default 0.0) and
    ``recipe["sleep"]`` (seconds per epoch, default 0). Emits ``start`` (with the process's
    ``CUDA_VISIBLE_DEVICES`` and process group), one ``epoch`` event per epoch with
    ``val_accuracy = trivial_accuracy(x, epoch)``, then ``result``; or ``stopped`` and exit
    code 143 once ``should_stop()`` turns true.

    ``recipe["fail"]`` makes it fail the way a real run can, at epoch ``recipe["fail_epoch"]``
    (default 1), after that epoch's sleep: ``"memory"`` raises :class:`MemoryError` (host
    memory exhausted), ``"kill"`` sends itself SIGKILL (what the kernel's OOM killer does: no
    event, no traceback), ``"exit"`` exits with code 1 and no event.

    Example:
        >>> events = []
        >>> trivial_target(
        ...     {"epochs": 2, "x": 0.5},
        ...     emit=events.append,
        ...     cache_dir=None,
        ...     should_stop=lambda: False,
        ... )
        0
        >>> [e["event"] for e in events], events[-1]["val_accuracy"]
        (['start', 'epoch', 'epoch', 'result'], 0.75)
    """
    epochs = int(recipe.get("epochs", 1))
    x = float(recipe.get("x", 0.0))
    pause = float(recipe.get("sleep", 0.0))
    fail = recipe.get("fail")
    if fail not in FAILURES:
        raise ValueError(f"fail must be one of {', '.join(map(str, FAILURES))}, got {fail!r}")
    fail_epoch = int(recipe.get("fail_epoch", 1))
    emit(
        {
            "event": "start",
            "pid": os.getpid(),
            "pgid": os.getpgrp(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "cache_dir": cache_dir,
        }
    )
    print(f"trivial: {epochs} epochs at x={x}", file=sys.stderr)
    accuracy = 0.0
    for epoch in range(1, epochs + 1):
        if _sleep_unless_stopped(pause, should_stop):
            emit({"event": "stopped", "epoch": epoch - 1})
            return EXIT_STOPPED
        if fail is not None and epoch == fail_epoch:
            _fail(fail)
        accuracy = trivial_accuracy(x, epoch)
        emit(
            {
                "event": "epoch",
                "epoch": epoch,
                "train_loss": 1.0 - accuracy,
                "val_accuracy": accuracy,
                "seconds": pause,
            }
        )
    emit(
        {"event": "result", "val_accuracy": accuracy, "test_accuracy": accuracy, "epochs": epochs}
    )
    return EXIT_OK


def _fail(how: str) -> None:
    """Fail as ``how`` says (see :func:`trivial_target`)."""
    sys.stdout.flush()
    if how == "memory":
        raise MemoryError("trivial: out of memory (simulated)")
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(EXIT_FAILED)


def _sleep_unless_stopped(seconds: float, should_stop: Callable[[], bool]) -> bool:
    """Sleep, polling ``should_stop`` every 10 ms; whether it turned true."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if should_stop():
            return True
        time.sleep(min(left, 0.01))
    return should_stop()
