"""What runs inside a trial process started by the forkserver, and a trivial target for tests.

Everything here is imported by the forkserver before it forks (see ``_server.py``), so a trial
process starts with this module, torch and the fine-tuning code already in memory.
"""

from __future__ import annotations

from collections.abc import Callable
import contextlib
import io
import math
import multiprocessing
from multiprocessing.connection import Connection
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any

from tether.finetune.worker import EXIT_FAILED
from tether.finetune.worker import EXIT_OK
from tether.finetune.worker import EXIT_STOPPED
from tether.finetune.worker import JsonLines
from tether.finetune.worker import install_stop_handlers


Emit = Callable[[dict[str, Any]], None]
Target = Callable[..., int]


def child_main(
    target: Target,
    recipe: dict[str, Any],
    env: dict[str, str],
    log_path: str,
    events: Connection,
    cache_dir: str | None,
) -> None:
    """The body of a forked trial process; exits with ``target``'s code.

    The order matters:

    1. ``setsid()``: the trial leads a new session and process group, so that the terminal's
       Ctrl-C (sent to the harness's foreground group) never reaches it and ``killpg`` takes
       down whatever it spawned (data-loader workers) with it.
    2. The stop handlers (SIGTERM/SIGINT set a flag the training loop polls), before anything
       slow, so that a ``stop()`` right after ``start()`` is graceful as soon as possible.
    3. The harness's environment, with ``CUDA_VISIBLE_DEVICES`` already set to the trial's
       device. The forkserver never touched CUDA, and nothing here does before this line, so
       when the run later initialises CUDA it sees exactly that GPU (or none for ``""``).
    4. stdout and stderr into the trial's log: concurrent trials do not interleave in the
       terminal, and a stray ``print`` cannot reach the event pipe.
    5. A guard thread that kills the trial's process group if the harness dies.
    """
    os.setsid()
    stop = install_stop_handlers()
    os.environ.clear()
    os.environ.update(env)
    _redirect_output(log_path)
    _die_with_parent()
    stream = open(os.dup(events.fileno()), "w", encoding="utf-8")  # noqa: SIM115 (closed below)
    events.close()
    emit = JsonLines(stream)
    try:
        code = _call(target, recipe, emit=emit, cache_dir=cache_dir, should_stop=stop.is_set)
    finally:
        with contextlib.suppress(OSError):  # the harness is gone: nobody to tell
            stream.close()
    sys.exit(code)


def _call(
    target: Target,
    recipe: dict[str, Any],
    *,
    emit: Emit,
    cache_dir: str | None,
    should_stop: Callable[[], bool],
) -> int:
    """``target``'s exit code; a crash becomes a traceback in the log, an error event and 1."""
    try:
        code = target(recipe, emit=emit, cache_dir=cache_dir, should_stop=should_stop)
    except Exception as error:  # the harness must learn of any crash, then fail the trial
        traceback.print_exc()
        with contextlib.suppress(OSError, ValueError):
            emit(
                {"event": "error", "kind": "crash", "message": f"{type(error).__name__}: {error}"}
            )
        return EXIT_FAILED
    if not isinstance(code, int):
        print(f"launcher: the target returned {code!r}, not an exit code", file=sys.stderr)
        return EXIT_FAILED
    return code


def _redirect_output(log_path: str) -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True)


def _die_with_parent() -> None:
    """Kill this trial's process group as soon as the harness process is gone.

    The trial lives in its own session (no terminal signals) and is a child of the forkserver,
    not of the harness, so nothing else would stop it from training on for hours after the
    harness was killed. multiprocessing gives each child a sentinel that becomes readable when
    the parent's end closes, which happens when the parent dies.
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="tether-orphan-guard", daemon=True).start()


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
        >>> with Launcher() as launcher:  # doctest: +SKIP
        ...     trial = launcher.start(
        ...         {"epochs": 3, "x": 0.4},
        ...         device="",
        ...         log_path=Path("t.log"),
        ...         target=trivial_target,
        ...     )
        ...     events = list(trial.events(timeout=10))
        ...     code = trial.wait()
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
