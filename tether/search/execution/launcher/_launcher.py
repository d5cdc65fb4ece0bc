"""The :class:`Launcher`: starts trial processes, in fork or subprocess mode."""

from __future__ import annotations

import atexit
from collections.abc import Callable
from collections.abc import Sequence
import contextlib
import json
import multiprocessing
from multiprocessing.connection import Connection
import os
from pathlib import Path
import subprocess
import sys
import tempfile
import threading
from types import TracebackType
from typing import Any
from typing import Literal
import weakref

from tether.finetune.worker import execute
from tether.search.execution.launcher import _server
from tether.search.execution.launcher._child import child_main
from tether.search.execution.launcher._trial import MP_LOCK
from tether.search.execution.launcher._trial import ForkHandle
from tether.search.execution.launcher._trial import PopenHandle
from tether.search.execution.launcher._trial import TrialProcess
from tether.search.execution.launcher._trial import wait_exit


Mode = Literal["fork", "subprocess"]
MODES: tuple[Mode, ...] = ("fork", "subprocess")
# What a run imports before its first event. optuna (the worker records its version) and
# scikit-learn (the digits task) cost a forked trial ~1.4 s of its ~1.5 s start when left out.
DEFAULT_PRELOAD = ("torch", "torchvision", "tether.finetune.run", "optuna", "sklearn.datasets")

_open_launchers: weakref.WeakSet[Launcher] = weakref.WeakSet()


class Launcher:
    """Starts trial processes; one per trial, each on the device it is given.

    Args:
        mode: ``"fork"`` (default): trials are forked from a forkserver that has imported
            ``preload`` already, so a trial starts in a fraction of a second instead of the
            seconds a fresh interpreter spends importing torch. ``"subprocess"``: a fresh
            ``python -m tether.finetune.worker`` per trial, the fallback and the point of
            comparison.
        preload: modules the forkserver imports once (fork mode only). None of them may touch
            CUDA at import time: a process forked after CUDA initialised cannot use it. The
            forkserver is process-global; see :mod:`tether.search.execution.launcher._server` for
            how several launchers share it.

    Closing a launcher (or leaving its ``with`` block, or the interpreter exiting) kills the
    trials it started that are still running, then stops the forkserver; :meth:`TrialProcess.stop`
    them first for a graceful end.

    A trial is stopped gracefully with :meth:`TrialProcess.stop`: the pruner's way.

    Example:
        >>> import tempfile
        >>> from tether.testing.targets import trivial_target
        >>> log = Path(tempfile.mkdtemp()) / "trial.log"
        >>> with Launcher(preload=()) as launcher:
        ...     trial = launcher.start(
        ...         {"epochs": 100, "sleep": 0.05}, device="", log_path=log, target=trivial_target
        ...     )
        ...     for event in trial.events(timeout=60):
        ...         if event["event"] == "epoch" and event["epoch"] == 2:
        ...             trial.stop()  # as when the pruner says so
        ...     code = trial.wait()
        >>> event["event"], code
        ('stopped', 143)
    """

    def __init__(self, *, mode: Mode = "fork", preload: Sequence[str] = DEFAULT_PRELOAD) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode: Mode = mode
        self.preload = _server.check_importable(preload)
        self._lock = threading.Lock()
        self._live: set[TrialProcess] = set()
        self._closed = False
        if mode == "fork":
            self._context = multiprocessing.get_context("forkserver")
            _server.acquire(self.preload)  # the server starts preloading now, in the background
        _open_launchers.add(self)

    def __enter__(self) -> Launcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def start(
        self,
        recipe: dict[str, Any],
        *,
        device: str | None,
        log_path: Path,
        cache_dir: Path | None = None,
        target: Callable[..., int] | None = None,
    ) -> TrialProcess:
        """Start one trial process and return at once; thread-safe.

        In fork mode the very first start waits for the forkserver to finish preloading
        (seconds); later ones take milliseconds.

        Args:
            recipe: the resolved recipe (a JSON object), handed to the target unchanged.
            device: the trial's ``CUDA_VISIBLE_DEVICES``: ``"0"``, ``"1"``, ... or ``""`` for no
                GPU; None leaves the variable as it is in this process. A recipe whose
                ``train.device`` is ``auto`` then sees exactly that GPU as ``cuda:0``, or none.
            log_path: receives the trial's stdout and stderr (appended; parents created).
            cache_dir: the worker's ``--cache-dir``; None: its default.
            target: fork mode only: ``target(recipe, *, emit, cache_dir, should_stop) -> int``,
                a module-level function (it is pickled by name). Default: the real worker,
                :func:`tether.finetune.worker.execute`.

        Raises:
            ValueError: a bad argument, or a target in subprocess mode.
            RuntimeError: the launcher is closed.
        """
        if not isinstance(recipe, dict):
            raise ValueError(f"recipe must be a dict, got {type(recipe).__name__}")
        if device is not None and not isinstance(device, str):
            raise ValueError(f"device must be a string such as '0' or '' (cpu), got {device!r}")
        if target is not None and self.mode == "subprocess":
            raise ValueError("target is only supported in fork mode (subprocess runs the worker)")
        try:
            recipe_json = json.dumps(recipe)
        except (TypeError, ValueError) as error:
            raise ValueError(f"recipe must be JSON-serialisable: {error}") from None
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_offset = log_path.stat().st_size if log_path.exists() else 0
        env = dict(os.environ)
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device
        with self._lock:
            if self._closed:
                raise RuntimeError("the launcher is closed")
            handle: ForkHandle | PopenHandle
            if self.mode == "fork":
                handle, events_fd = self._fork(target or execute, recipe, env, log_path, cache_dir)
            else:
                handle, events_fd = _spawn(recipe_json, env, log_path, cache_dir)
            trial = TrialProcess(
                handle,
                events_fd=events_fd,
                log_path=log_path,
                log_offset=log_offset,
                device=device,
                mode=self.mode,
                on_finish=self._forget,
            )
            self._live.add(trial)
        return trial

    def close(self) -> None:
        """Kill the trials still running, then stop the forkserver if no launcher needs it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            trials, self._live = list(self._live), set()
        for trial in trials:
            trial.kill()
        for trial in trials:
            with contextlib.suppress(TimeoutError):
                wait_exit(trial._handle, 10.0)
        if self.mode == "fork":
            _server.release()
        _open_launchers.discard(self)

    def _forget(self, trial: TrialProcess) -> None:
        with self._lock:
            self._live.discard(trial)

    def _fork(
        self,
        target: Callable[..., int],
        recipe: dict[str, Any],
        env: dict[str, str],
        log_path: Path,
        cache_dir: Path | None,
    ) -> tuple[ForkHandle, int]:
        read_fd, write_fd = os.pipe()
        # A Connection pickles as a file descriptor the forkserver passes to the child.
        events = Connection(write_fd, readable=False)
        args = (target, recipe, env, str(log_path), events, _str(cache_dir))
        process = self._context.Process(target=child_main, args=args, name="tether-trial")
        try:
            with MP_LOCK:
                process.start()
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            events.close()
        return ForkHandle(process), read_fd


def _spawn(
    recipe_json: str, env: dict[str, str], log_path: Path, cache_dir: Path | None
) -> tuple[PopenHandle, int]:
    """``python -m tether.finetune.worker RECIPE``: events on stdout, stderr to the log.

    ``start_new_session`` gives the worker its own process group, as in fork mode.
    """
    fd, name = tempfile.mkstemp(prefix="tether-recipe-", suffix=".json")
    recipe_path = Path(name)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(recipe_json)
    command = [sys.executable, "-m", "tether.finetune.worker", str(recipe_path)]
    if cache_dir is not None:
        command += ["--cache-dir", str(cache_dir)]
    read_fd, write_fd = os.pipe()
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        popen = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=write_fd,
            stderr=log_fd,
            env=env,
            start_new_session=True,
        )
    except BaseException:
        os.close(read_fd)
        recipe_path.unlink(missing_ok=True)
        raise
    finally:
        os.close(write_fd)
        os.close(log_fd)
    return PopenHandle(popen, recipe_path), read_fd


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


@atexit.register
def _close_open_launchers() -> None:
    """Registered after multiprocessing's own exit handler, so it runs first: otherwise that
    handler would join (wait for) every running trial before the interpreter exits."""
    for launcher in list(_open_launchers):
        launcher.close()
