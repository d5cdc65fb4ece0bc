"""What runs inside a trial process started by the forkserver.

Everything here is imported by the forkserver before it forks (see ``_server.py``), so a trial
process starts with this module, torch and the fine-tuning code already in memory.
"""

from __future__ import annotations

from collections.abc import Callable
import contextlib
import io
import multiprocessing
from multiprocessing.connection import Connection
import os
import signal
import sys
import threading
import traceback
from typing import Any

from tether.finetune.worker import EXIT_FAILED
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
