"""A running trial process: its event stream, its exit code, its log."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from collections.abc import Iterator
import contextlib
import json
import math
import multiprocessing.process
import os
from pathlib import Path
import select
import signal
import subprocess
import threading
import time
from typing import Any
from typing import Protocol
import weakref


# multiprocessing.Process is not thread-safe: two threads polling one forkserver child can
# both see its sentinel ready and one then reads EOF (exit code 255), and Process.start()
# polls every other child. Launcher threads start and reap under this lock.
MP_LOCK = threading.Lock()

_POLL_SLICE = 0.5  # while waiting for events: how often to check whether the leader exited


class Handle(Protocol):
    """The part that differs between a forked process and a subprocess."""

    pid: int

    def poll(self) -> int | None: ...

    def close(self) -> None: ...


class ForkHandle:
    """A ``multiprocessing`` process started by the forkserver (not our child: the server
    reaps it and sends us its exit status)."""

    def __init__(self, process: multiprocessing.process.BaseProcess) -> None:
        if process.pid is None:
            raise RuntimeError("the trial process has not started")
        self.pid: int = process.pid
        self._process = process
        self._code: int | None = None
        self._closed = False

    def poll(self) -> int | None:
        with MP_LOCK:
            if self._code is None and not self._closed:
                self._process.join(0)
                self._code = self._process.exitcode
            return self._code

    def close(self) -> None:
        with MP_LOCK:
            if not self._closed and self._code is not None:
                self._process.close()
                self._closed = True


class PopenHandle:
    """A ``python -m tether.finetune.worker`` subprocess, and the recipe file it reads."""

    def __init__(self, popen: subprocess.Popen[bytes], recipe_path: Path) -> None:
        self.pid: int = popen.pid
        self._popen = popen
        self._recipe_path = recipe_path

    def poll(self) -> int | None:
        return self._popen.poll()

    def close(self) -> None:
        if self._popen.poll() is not None:
            self._recipe_path.unlink(missing_ok=True)


class EventStream:
    """Lines from a pipe, read without blocking past a deadline.

    Reads happen under ``lock``; the file descriptor is closed at end of file, or by
    :meth:`close`, so that finished trials hold no descriptors.
    """

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.lock = threading.Lock()
        self.eof = False
        self._fd = fd
        self._poller = select.poll()
        self._poller.register(fd, select.POLLIN)
        self._partial = bytearray()
        self._lines: deque[bytes] = deque()

    def pop(self) -> bytes | None:
        return self._lines.popleft() if self._lines else None

    def fill(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds for data and read all there is; False if none came."""
        if self.eof:
            return True
        ms = None if timeout is None else max(0, math.ceil(timeout * 1000))
        if not self._poller.poll(ms):
            return False
        self._read_available()
        return True

    def close(self) -> None:
        """Keep whatever was written, then release the descriptor (idempotent)."""
        if not self.lock.acquire(timeout=1.0):
            return  # another thread is reading: the descriptor will close at its EOF
        try:
            if not self.eof:
                self._read_available()
            if not self.eof:
                self._end()
        finally:
            self.lock.release()

    def _read_available(self) -> None:
        while True:
            try:
                chunk = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                return
            if not chunk:
                self._end()
                return
            self._partial += chunk
            *complete, rest = self._partial.split(b"\n")
            self._lines.extend(bytes(line) for line in complete)
            self._partial = bytearray(rest)

    def _end(self) -> None:
        if self._partial:
            self._lines.append(bytes(self._partial))
            self._partial.clear()
        self._poller.unregister(self._fd)
        os.close(self._fd)
        self.eof = True


def parse_event(line: bytes) -> dict[str, Any] | None:
    """The event on one line, or None if the line is not a JSON object with an ``event`` key."""
    try:
        value = json.loads(line)
    except ValueError:
        return None
    if isinstance(value, dict) and isinstance(value.get("event"), str):
        return value
    return None


def _release(stream: EventStream, handle: Handle) -> None:
    stream.close()
    handle.close()


class TrialProcess:
    """One trial process started by :class:`Launcher`.

    The thread that started a trial reads it: :meth:`events` until they end, then
    :meth:`wait`, which also releases its pipes. :meth:`stop` and :meth:`kill` may be called
    from any thread (a time limit, Ctrl-C in the main thread).

    Exit codes are the worker's (0 result, 1 failure, 2 bad input, 143 stopped after SIGTERM)
    or, when a signal killed the process, the negative signal number, as ``subprocess`` and
    ``multiprocessing`` report it: -9 after :meth:`kill`; -15 if SIGTERM arrived before the
    trial installed its stop handlers (its first milliseconds). 143 and -15 thus tell a
    graceful stop from a killed one.

    Attributes:
        pid: the process id; the trial also leads a process group of that id.
        log_path: the file that receives the trial's stdout and stderr.
        device: the ``CUDA_VISIBLE_DEVICES`` it was given (None: inherited).
        mode: ``"fork"`` or ``"subprocess"``.
    """

    def __init__(
        self,
        handle: Handle,
        *,
        events_fd: int,
        log_path: Path,
        log_offset: int,
        device: str | None,
        mode: str,
        on_finish: Callable[[TrialProcess], None],
    ) -> None:
        self.pid = handle.pid
        self.log_path = log_path
        self.device = device
        self.mode = mode
        self._handle = handle
        self._stream = EventStream(events_fd)
        self._log_offset = log_offset
        self._on_finish = on_finish
        self._finished = False
        # An abandoned trial still releases its descriptors when collected.
        self._release = weakref.finalize(self, _release, self._stream, handle)

    def __repr__(self) -> str:
        return f"<TrialProcess pid={self.pid} {self.mode} returncode={self.returncode}>"

    @property
    def returncode(self) -> int | None:
        """The exit code, or None while the process runs."""
        return self._handle.poll()

    def events(self, *, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """The trial's events, parsed, as they arrive; ends when the trial closes its pipe.

        A line that is not a JSON event is copied to the trial's log (see :meth:`log_tail`)
        and skipped: nothing a trial writes can crash the harness. Then call :meth:`wait`.

        Args:
            timeout: seconds allowed between two events (and before the first); None waits
                forever.

        Raises:
            TimeoutError: no event and no end of stream within ``timeout`` seconds.
        """
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            line = self._next_line(deadline, timeout)
            if line is None:
                return
            event = parse_event(line)
            if event is None:
                self._note_stray(line)
                continue
            yield event
            deadline = None if timeout is None else time.monotonic() + timeout

    def _next_line(self, deadline: float | None, timeout: float | None) -> bytes | None:
        while True:
            with self._stream.lock:
                line = self._stream.pop()
                if line is not None or self._stream.eof:
                    return line
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"trial {self.pid}: no event for {timeout} s")
                got = self._stream.fill(_POLL_SLICE if left is None else min(left, _POLL_SLICE))
            if not got and self._handle.poll() is not None:
                # The leader exited but something it spawned still holds the pipe open.
                self._sweep()

    def stop(self, *, grace: float = 30.0) -> None:
        """Ask the trial to stop, and kill it if it has not within ``grace`` seconds.

        SIGTERM goes to the trial process only, not to its group: the worker finishes the
        current batch, emits ``{"event": "stopped"}`` and exits 143, shutting down its own data
        workers; signalling them too would crash it instead. Returns once the process exited
        (or was sent SIGKILL); read the rest of :meth:`events`, then :meth:`wait`.
        """
        if grace < 0:
            raise ValueError(f"grace must be >= 0 seconds, got {grace!r}")
        if self._signal(signal.SIGTERM, group=False):
            return
        deadline = time.monotonic() + grace
        delay = 0.001
        while self._handle.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                return
            step = min(delay, left)
            delay = min(2 * delay, 0.05)
            # Keep reading meanwhile, so that a full pipe cannot block the stopping trial;
            # unless another thread is reading it already.
            if self._stream.lock.acquire(blocking=False):
                try:
                    if not self._stream.eof:
                        self._stream.fill(step)
                        continue
                finally:
                    self._stream.lock.release()
            time.sleep(step)

    def terminate(self) -> None:
        """Send the trial SIGTERM and return at once (the first half of :meth:`stop`): the
        worker finishes its batch and emits ``stopped``. Stopping many trials together is
        :meth:`terminate` on each, then :meth:`stop` (or :meth:`kill`) on those still running.
        """
        self._signal(signal.SIGTERM, group=False)

    def kill(self) -> None:
        """SIGKILL the trial and its whole process group; then call :meth:`wait`."""
        self._signal(signal.SIGKILL, group=True)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit code (see the class docstring), then release the trial's pipes.

        Raises:
            TimeoutError: still running after ``timeout`` seconds.
        """
        code = wait_exit(self._handle, timeout)
        if not self._finished:
            self._finished = True
            self._sweep()
            self._release()
            self._on_finish(self)
        return code

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines this trial wrote to its log (stdout, stderr, stray lines)."""
        try:
            with open(self.log_path, "rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(self._log_offset, size - 256 * 1024))
                data = handle.read()
        except OSError:
            return ""
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])

    def _note_stray(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip()
        if not text:
            return
        with contextlib.suppress(OSError), open(self.log_path, "a", encoding="utf-8") as log:
            log.write(f"launcher: not an event, skipped: {text[:2000]}\n")

    def _signal(self, signum: int, *, group: bool) -> bool:
        """Send ``signum`` unless the trial has exited (its pid may be reused); whether it had.

        A forked trial is reaped by the forkserver, so a pid could in principle be reused
        between its death and our poll; pids wrap around only after millions of processes.
        """
        if self._handle.poll() is not None:
            return True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, signum)
        if group:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signum)
        return False

    def _sweep(self) -> None:
        """SIGKILL what the exited trial left behind in its process group (none, normally)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)


def wait_exit(handle: Handle, timeout: float | None) -> int:
    """Poll ``handle`` with a growing delay (1 ms to 50 ms) until it exits.

    Polling, rather than blocking on a descriptor, keeps waiting safe while another thread
    releases the process.
    """
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds, got {timeout!r}")
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.001
    while (code := handle.poll()) is None:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise TimeoutError(f"trial {handle.pid} still runs after {timeout} s")
        time.sleep(delay if left is None else min(delay, left))
        delay = min(2 * delay, 0.05)
    return code
