"""Trial processes: events, exit codes, logs, devices, stopping, killing, and no leaks.

One fork-mode launcher (torch preloaded) serves the whole module; the forkserver's lifetime and
the death of a harness are checked in child interpreters of their own.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterator
import json
import os
from pathlib import Path
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from tether.finetune.worker import JsonLines
from tether.search.execution.launcher import Launcher
from tether.search.execution.launcher import TrialProcess
from tether.testing.specs import tiny_digits_recipe
from tether.testing.targets import trivial_accuracy
from tether.testing.targets import trivial_target


Emit = Callable[[dict[str, Any]], None]


@pytest.fixture(scope="module")
def launcher() -> Iterator[Launcher]:
    with Launcher(mode="fork") as launcher:
        yield launcher


def _run(trial: TrialProcess, timeout: float = 30.0) -> tuple[list[dict[str, Any]], int]:
    events = list(trial.events(timeout=timeout))
    return events, trial.wait(timeout=timeout)


def _names(events: list[dict[str, Any]]) -> list[str]:
    return [event["event"] for event in events]


def _crashing_target(
    recipe: dict[str, Any], *, emit: Emit, cache_dir: str | None, should_stop: Callable[[], bool]
) -> int:
    emit({"event": "start"})
    raise RuntimeError("boom")


def _noisy_target(
    recipe: dict[str, Any],
    *,
    emit: JsonLines,
    cache_dir: str | None,
    should_stop: Callable[[], bool],
) -> int:
    """Prints garbage on stdout, and writes garbage into the event pipe itself."""
    print("garbage on stdout {")
    sys.stdout.write("no newline either")
    emit({"event": "start"})
    stream = emit.stream
    stream.write('not json at all\n{"no": "event key"}\n[1, 2]\n\n')
    stream.flush()
    emit({"event": "result", "val_accuracy": 1.0})
    return 0


def _env_target(
    recipe: dict[str, Any], *, emit: Emit, cache_dir: str | None, should_stop: Callable[[], bool]
) -> int:
    emit({"event": "start", "probe": os.environ.get("TETHER_LAUNCHER_PROBE")})
    return 0


@pytest.mark.parametrize("device", ["", "1", None])
def test_fork_trial_emits_events_in_order_and_logs_apart(
    launcher: Launcher, tmp_path: Path, device: str | None
) -> None:
    log = tmp_path / "logs" / "trial.log"
    trial = launcher.start(
        {"epochs": 3, "x": 0.3}, device=device, log_path=log, target=trivial_target
    )
    events, code = _run(trial)
    assert code == 0
    assert _names(events) == ["start", "epoch", "epoch", "epoch", "result"]
    start, *epochs, result = events
    expected_device = os.environ.get("CUDA_VISIBLE_DEVICES") if device is None else device
    assert start["cuda_visible_devices"] == expected_device
    assert start["pid"] == trial.pid
    assert start["pgid"] == trial.pid  # its own process group
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert [e["val_accuracy"] for e in epochs] == [trivial_accuracy(0.3, k) for k in (1, 2, 3)]
    assert result["val_accuracy"] == epochs[-1]["val_accuracy"]
    assert "trivial: 3 epochs at x=0.3" in log.read_text()
    assert "trivial: 3 epochs" in trial.log_tail()


def test_the_child_sees_the_harness_environment_of_now(
    launcher: Launcher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETHER_LAUNCHER_PROBE", "set after the forkserver started")
    trial = launcher.start({}, device="", log_path=tmp_path / "t.log", target=_env_target)
    events, code = _run(trial)
    assert code == 0
    assert events[0]["probe"] == "set after the forkserver started"


def test_stop_is_graceful_within_a_second(launcher: Launcher, tmp_path: Path) -> None:
    trial = launcher.start(
        {"epochs": 1000, "sleep": 0.05}, device="", log_path=tmp_path / "t.log",
        target=trivial_target,
    )  # fmt: skip
    stream = trial.events(timeout=30)
    assert next(stream)["event"] == "start"
    trial.stop(grace=1.0)  # not stopped within 1 s: killed, and the exit code says -9
    rest = list(stream)
    assert rest[-1]["event"] == "stopped"
    assert trial.wait(timeout=5) == 143


def test_kill_reports_the_signal(launcher: Launcher, tmp_path: Path) -> None:
    trial = launcher.start(
        {"epochs": 1000, "sleep": 0.05}, device="", log_path=tmp_path / "t.log",
        target=trivial_target,
    )  # fmt: skip
    stream = trial.events(timeout=30)
    assert next(stream)["event"] == "start"
    trial.kill()
    list(stream)
    assert trial.wait(timeout=5) == -signal.SIGKILL
    trial.kill()  # a finished trial is left alone
    trial.stop()


def test_silence_is_a_timeout(launcher: Launcher, tmp_path: Path) -> None:
    trial = launcher.start(
        {"epochs": 2, "sleep": 30}, device="", log_path=tmp_path / "t.log", target=trivial_target
    )
    stream = trial.events(timeout=0.3)
    assert next(stream)["event"] == "start"
    with pytest.raises(TimeoutError):
        next(stream)
    with pytest.raises(TimeoutError):
        trial.wait(timeout=0.05)
    trial.kill()
    assert trial.wait(timeout=5) == -signal.SIGKILL


def test_a_crash_is_exit_code_1_with_the_traceback_in_the_log(
    launcher: Launcher, tmp_path: Path
) -> None:
    trial = launcher.start({}, device="", log_path=tmp_path / "t.log", target=_crashing_target)
    events, code = _run(trial)
    assert code == 1
    assert _names(events) == ["start", "error"]
    assert events[1]["kind"] == "crash"
    assert events[1]["message"] == "RuntimeError: boom"
    tail = trial.log_tail()
    assert "Traceback" in tail
    assert "RuntimeError: boom" in tail


def test_garbage_never_corrupts_the_events(launcher: Launcher, tmp_path: Path) -> None:
    trial = launcher.start({}, device="", log_path=tmp_path / "t.log", target=_noisy_target)
    events, code = _run(trial)
    assert code == 0
    assert events == [{"event": "start"}, {"event": "result", "val_accuracy": 1.0}]
    tail = trial.log_tail()
    assert "garbage on stdout {" in tail
    assert "no newline either" in tail
    assert "not an event, skipped: not json at all" in tail
    assert 'skipped: {"no": "event key"}' in tail


def test_bad_arguments_are_refused_early(launcher: Launcher, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode must be one of fork, subprocess"):
        Launcher(mode="thread")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no module named 'no_such_module'"):
        Launcher(preload=("no_such_module",))
    with pytest.raises(ValueError, match="JSON-serialisable"):
        launcher.start({"x": object()}, device="", log_path=tmp_path / "t.log")
    closed = Launcher(mode="subprocess")
    with pytest.raises(ValueError, match="target is only supported in fork mode"):
        closed.start({}, device="", log_path=tmp_path / "t.log", target=trivial_target)
    closed.close()
    with pytest.raises(RuntimeError, match="closed"):
        closed.start({}, device="", log_path=tmp_path / "t.log")


def test_the_forkserver_is_shared_or_refused(launcher: Launcher, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="already runs with preload"):
        Launcher(preload=("json",))  # not preloaded by the running server
    with Launcher(preload=("torch",)) as second:  # covered: shares the server
        _, code = _run(second.start({}, device="", log_path=tmp_path / "a.log",
                                    target=trivial_target))  # fmt: skip
        assert code == 0
    _, code = _run(launcher.start({}, device="", log_path=tmp_path / "b.log",
                                  target=trivial_target))  # fmt: skip
    assert code == 0  # closing the second launcher left the server running


def test_a_digits_run_through_fork_mode(
    launcher: Launcher, tmp_path: Path, cache_dir: Path
) -> None:
    trial = launcher.start(
        tiny_digits_recipe(epochs=2), device="", log_path=tmp_path / "t.log", cache_dir=cache_dir
    )
    events, code = _run(trial, timeout=120)
    assert code == 0, trial.log_tail()
    assert _names(events) == ["start", "epoch", "epoch", "result"]
    assert events[0]["device"] == "cpu"
    assert 0 <= events[-1]["test_accuracy"] <= 1


def test_a_digits_run_through_subprocess_mode(tmp_path: Path, cache_dir: Path) -> None:
    with Launcher(mode="subprocess") as launcher:
        trial = launcher.start(
            tiny_digits_recipe(epochs=2), device="", log_path=tmp_path / "t.log",
            cache_dir=cache_dir,
        )  # fmt: skip
        assert os.getpgid(trial.pid) == trial.pid
        events, code = _run(trial, timeout=120)
    assert code == 0, trial.log_tail()
    assert _names(events) == ["start", "epoch", "epoch", "result"]
    assert 0 <= events[-1]["test_accuracy"] <= 1


def test_thirty_trials_leak_no_descriptors(
    launcher: Launcher, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def one(index: int) -> float:
        started = time.perf_counter()
        trial = launcher.start(
            {"epochs": 1}, device="", log_path=tmp_path / f"{index}.log", target=trivial_target
        )
        stream = trial.events(timeout=30)
        assert next(stream)["event"] == "start"
        latency = time.perf_counter() - started
        assert _names(list(stream)) == ["epoch", "result"]
        assert trial.wait(timeout=30) == 0
        return latency

    one(-1)
    before = len(os.listdir("/proc/self/fd"))
    latencies = [one(index) for index in range(30)]
    assert len(os.listdir("/proc/self/fd")) == before
    with capsys.disabled():
        print(
            f"\nfork mode, start to first event: median {1000 * statistics.median(latencies):.0f}"
            f" ms, max {1000 * max(latencies):.0f} ms over 30 trivial trials"
        )


_HARNESS = """
import json, sys, time
from pathlib import Path
import multiprocessing.forkserver as forkserver
from tether.search.execution.launcher import Launcher
from tether.testing.targets import trivial_target

server = forkserver._forkserver
log = Path(sys.argv[1])
sleeping = {"epochs": 1000, "sleep": 0.05}
if sys.argv[2] == "die":
    launcher = Launcher(preload=())
    trial = launcher.start(sleeping, device="", log_path=log, target=trivial_target)
    next(trial.events(timeout=30))
    print(trial.pid, flush=True)
    time.sleep(60)
else:
    with Launcher(preload=()) as launcher:
        trial = launcher.start(sleeping, device="", log_path=log, target=trivial_target)
        next(trial.events(timeout=30))
        running = server._forkserver_pid is not None
    print(json.dumps({"code": trial.wait(timeout=5), "running": running,
                      "stopped": server._forkserver_pid is None,
                      "preload": server._preload_modules}))
"""


def _harness(tmp_path: Path, how: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_HARNESS), str(tmp_path / "t.log"), how],
        stdout=subprocess.PIPE,
        text=True,
    )


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie whose new parent does not reap it
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (OSError, IndexError):
        return True


def test_close_kills_running_trials_and_stops_the_forkserver(tmp_path: Path) -> None:
    harness = _harness(tmp_path, "close")
    stdout, _ = harness.communicate(timeout=60)
    assert harness.returncode == 0
    report = json.loads(stdout)
    assert report == {
        "code": -signal.SIGKILL,
        "running": True,
        "stopped": True,
        "preload": ["__main__"],  # multiprocessing's default, put back
    }


def test_a_trial_dies_with_its_harness(tmp_path: Path) -> None:
    harness = _harness(tmp_path, "die")
    assert harness.stdout is not None
    pid = int(harness.stdout.readline())
    harness.kill()
    harness.wait(timeout=10)
    harness.stdout.close()
    deadline = time.monotonic() + 10
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _gone(pid)
