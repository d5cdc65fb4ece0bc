"""Faults: lost connections, killed workers, dying trials, signals, a shared SQLite file.

Worker processes are spawned interpreters running
:class:`tether.search.execution.runner.TicketRunner` (the loop of ``tether worker`` without the
spec) on :func:`tether.testing.targets.trivial_target`; the signal tests run the real
``tether`` command on a tiny digits spec.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterator
import contextlib
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
import os
from pathlib import Path
import signal
import subprocess
import sys
import time
from typing import Any

import optuna
from optuna.exceptions import StorageInternalError
from optuna.storages import RDBStorage
from optuna.trial import TrialState
import pytest
import sqlalchemy.exc
import yaml

from tests.conftest import ROOT
from tests.search.conftest import pg_connect
from tests.search.conftest import trials_ran
from tether.search.execution.launcher import Launcher
from tether.search.execution.runner import TicketRunner
from tether.search.execution.slots import parse_devices
from tether.search.execution.tickets import claim
from tether.search.execution.tickets import enqueue_tickets
from tether.search.execution.trials import tell_once
from tether.search.storage import StorageOptions
from tether.search.storage import open_storage
from tether.search.storage import reap
from tether.testing.targets import trivial_target


FAST_HEARTBEAT: dict[str, Any] = {"heartbeat_interval": 1, "grace_period": 2}


def _study(url: str, n_trials: int, name: str = "faults") -> optuna.Study:
    storage = open_storage(url, options=StorageOptions(application_name="tether-test"))
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    enqueue_tickets(study, n_trials=n_trials)
    return study


def _states(study: optuna.Study) -> list[TrialState]:
    return [t.state for t in study.get_trials(deepcopy=False)]


def _join(processes: list[BaseProcess], seconds: float) -> list[int | None]:
    deadline = time.monotonic() + seconds
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    return [p.exitcode for p in processes]


def _wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


# --- PostgreSQL connections cut while workers run ---------------------------------------------


def test_cut_connections_lose_no_trial(
    pg_database: str, start_workers: Callable[..., list[BaseProcess]], tmp_path: Path
) -> None:
    study = _study(pg_database, 60)
    options = {"application_name": "tether-worker", "reconnect_timeout": 60.0}
    go = tmp_path / "go"
    workers = start_workers(
        4, pg_database, ["faults"], options=options, recipe={"sleep": 0.02}, go=str(go)
    )
    # The cuts start once every worker has opened the storage: cutting every connection four
    # times a second from the start leaves a worker booting on a loaded machine no window to
    # open one (opening through lost connections is tested on its own below).
    logs = tmp_path / "logs"
    _wait_for(lambda: len(list(logs.glob("ready-*"))) == 4, 120, "the workers to start")
    go.touch()
    cut = 0
    with pg_connect(pg_database) as connection:
        while any(w.is_alive() for w in workers):
            time.sleep(0.25)
            row = connection.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) "
                "FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
            cut += int(row[0])
    assert _join(workers, 5) == [0] * 4
    assert cut >= 20, f"only {cut} connections were cut"
    trials = study.get_trials(deepcopy=False)
    assert sorted(t.number for t in trials) == list(range(60))
    assert _states(study) == [TrialState.COMPLETE] * 60
    assert trials_ran(tmp_path / "logs") == 60, "a ticket was run twice"
    assert all(t.value is not None and len(t.user_attrs["curve"]) == 1 for t in trials)


def test_opening_waits_out_lost_connections(
    pg_database: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from tether.search.storage import connect

    _study(pg_database, 1)
    real = connect._server
    calls: list[int] = []

    def lost_twice(*args: Any) -> Any:
        calls.append(1)
        if len(calls) <= 2:
            raise _lost_reply()
        return real(*args)

    monkeypatch.setattr(connect, "_server", lost_twice)
    storage = open_storage(pg_database, options=StorageOptions(reconnect_timeout=30.0))
    assert len(calls) == 3
    assert optuna.load_study(study_name="faults", storage=storage).trials[0].number == 0
    assert "storage connection lost" in caplog.text


def _lost_reply() -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError(
        "COMMIT", None, Exception("server closed the connection unexpectedly")
    )


def test_a_tell_whose_reply_is_lost_is_recorded_once(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = _study(pg_database, 1)
    trial = claim(study)
    assert trial is not None
    real = RDBStorage.set_trial_state_values
    lost: list[int] = []

    def committed_then_lost(
        self: RDBStorage, trial_id: int, state: TrialState, values: Any = None
    ) -> bool:
        done = real(self, trial_id, state, values)
        if state.is_finished() and not lost:
            lost.append(trial_id)
            raise StorageInternalError("the reply was lost") from _lost_reply()
        return done

    monkeypatch.setattr(RDBStorage, "set_trial_state_values", committed_then_lost)
    assert tell_once(study, trial, 0.5)  # the retry finds it told: no error, no second tell
    assert lost == [trial._trial_id]
    (told,) = study.get_trials(deepcopy=False)
    assert (told.state, told.value) == (TrialState.COMPLETE, 0.5)


def test_a_claim_whose_reply_is_lost_is_kept_not_repeated(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tether.search.storage import _optuna

    study = _study(pg_database, 3)
    real = _optuna.rdb_session
    lost: list[bool] = []

    @contextlib.contextmanager
    def committed_then_lost(storage: RDBStorage) -> Iterator[Any]:
        with real(storage) as session:
            yield session
        if not lost:
            lost.append(True)
            raise _lost_reply()

    monkeypatch.setattr(_optuna, "rdb_session", committed_then_lost)
    trial = claim(study)
    monkeypatch.undo()
    assert lost
    assert trial is not None
    assert _states(study) == [TrialState.RUNNING, TrialState.WAITING, TrialState.WAITING]
    assert trial.number == 0  # the ticket it had taken, recognised by its token


# --- a worker killed mid-trial ------------------------------------------------------------------


def _running(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def _kill_mid_trial(
    url: str, start_workers: Callable[..., list[BaseProcess]], study: optuna.Study
) -> int:
    """Start a worker whose trials take a minute, SIGKILL it mid-trial; its trial's number."""
    (slow,) = start_workers(1, url, ["faults"], options=FAST_HEARTBEAT, recipe={"sleep": 60})
    # sampled, not only claimed: a trial killed before it sampled has no params to retry with
    _wait_for(lambda: any(t.params for t in _running(study)), 60, "the slow worker never sampled")
    (trial,) = _running(study)
    assert slow.pid is not None
    os.kill(slow.pid, signal.SIGKILL)
    slow.join(10)
    return trial.number


def _assert_retried_and_completed(study: optuna.Study, killed: int, n_trials: int) -> None:
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == n_trials + 1  # the budget and one retry
    assert trials[killed].state == TrialState.FAIL
    (retry,) = [t for t in trials if t.system_attrs.get("retry_history") == [killed]]
    assert retry.state == TrialState.COMPLETE
    assert retry.params == trials[killed].params
    assert sum(t.state == TrialState.COMPLETE for t in trials) == n_trials
    assert not _running(study)


@pytest.fixture(params=["postgresql", "journal"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A storage several worker processes share: PostgreSQL (Optuna's heartbeats) or a journal
    file (Tether's own)."""
    if request.param == "journal":
        return f"journal:{tmp_path / 'faults.journal'}"
    url: str = request.getfixturevalue("pg_database")
    return url


def test_a_killed_workers_trial_is_retried_by_the_other_worker(
    shared_url: str, start_workers: Callable[..., list[BaseProcess]]
) -> None:
    study = _study(shared_url, 3)
    killed = _kill_mid_trial(shared_url, start_workers, study)
    # this one runs the other tickets, then waits: the killed worker's trial goes stale
    # within the grace period, is failed and retried, and runs here
    (other,) = start_workers(1, shared_url, ["faults"], options=FAST_HEARTBEAT)
    assert _join([other], 60) == [0]
    _assert_retried_and_completed(study, killed, 3)


def test_reap_on_demand_fails_and_retries_a_dead_workers_trial(
    shared_url: str, start_workers: Callable[..., list[BaseProcess]]
) -> None:
    study = _study(shared_url, 2)
    killed = _kill_mid_trial(shared_url, start_workers, study)
    storage = open_storage(shared_url, options=StorageOptions(**FAST_HEARTBEAT))
    on_demand = optuna.load_study(study_name="faults", storage=storage)
    assert reap(on_demand) == 0  # not stale yet
    time.sleep(2.5)  # past the grace period, nobody beating
    assert reap(on_demand) == 1  # what `tether reap` does
    assert [t.state for t in study.get_trials(deepcopy=False)][killed] == TrialState.FAIL
    assert TrialState.WAITING in _states(study)
    (worker,) = start_workers(1, shared_url, ["faults"], options=FAST_HEARTBEAT)
    assert _join([worker], 60) == [0]
    _assert_retried_and_completed(study, killed, 2)


# --- trials that die, or run too long -----------------------------------------------------------


def _failing(index: int, trial: optuna.Trial) -> dict[str, Any]:
    """Trial 1 is killed as by the OOM killer, 2 runs out of memory, 3 runs past its limit."""
    faults: dict[int, dict[str, Any]] = {
        1: {"fail": "kill"},
        2: {"fail": "memory"},
        3: {"sleep": 30},
    }
    return {"x": trial.suggest_float("x", 0.0, 1.0), "epochs": 2, **faults.get(trial.number, {})}


def test_a_dying_or_slow_trial_fails_alone(tmp_path: Path) -> None:
    study = _study(f"sqlite:///{tmp_path}/faults.db", 7)
    with Launcher(preload=()) as launcher:
        runner = TicketRunner(
            [study],
            recipe=_failing,
            launcher=launcher,
            slots=parse_devices("cpu", 2),  # two slots: threads of one process on SQLite
            log_dir=tmp_path / "logs",
            target=trivial_target,
            time_limit=1.0,
        )
        started = time.monotonic()
        runner.run()
    assert time.monotonic() - started < 20
    trials = study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    assert states == [TrialState.COMPLETE] + [TrialState.FAIL] * 3 + [TrialState.COMPLETE] * 3
    errors = [t.user_attrs["error"] for t in trials[1:4]]
    assert errors[0]["kind"] == "crash"
    assert "killed by SIGKILL" in errors[0]["message"]
    assert errors[1]["kind"] == "crash"
    assert "MemoryError" in errors[1]["message"]
    assert errors[2]["kind"] == "timeout"
    assert trials[3].user_attrs["seconds"] < 10  # stopped at the limit, not after 30 s


# --- SQLite is one process ------------------------------------------------------------------


def _spec(tmp_path: Path, name: str, epochs: int = 100_000) -> Path:
    """A digits spec of one trial (nothing searched) that trains for ``epochs``."""
    spec: dict[str, Any] = {
        "name": name,
        "recipe": str(ROOT / "configs" / "digits.yaml"),
        "set": {
            "train.epochs": epochs,
            "train.batch_size": 25,
            "data.shots": 5,
            "data.val_shots": 3,
        },
        "budget": {"n_trials": 1},
        "pruner": {"name": "none"},
        "methods": {"standard": {}},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_a_second_process_on_one_sqlite_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tether.cli import main
    from tether.search.execution.studies import create_studies
    from tether.search.spec import load_spec

    spec = _spec(tmp_path, "shared", epochs=1)  # were it not refused, it would end soon
    url = f"sqlite:///{tmp_path}/shared.db"
    create_studies(load_spec(str(spec)), open_storage(url), groups=["block1"])
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from tether.search.storage import hold_single_process, open_storage\n"
            "hold_single_process(open_storage(sys.argv[1]))\n"
            "print('held', flush=True)\n"
            "time.sleep(60)\n",
            url,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        args = ["worker", str(spec), "--storage", url, "--devices", "cpu"]
        code = main([*args, "--launcher", "subprocess", "--log-dir", str(tmp_path / "logs")])
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith(f"tether: error: {url} is for one process, and process ")
    assert f"journal:{tmp_path}/shared.journal" in err[-1]
    assert "postgresql+psycopg://" in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert not (tmp_path / "logs").exists()


# --- Ctrl-C and SIGTERM on the real command line --------------------------------------------


@dataclass
class _Search:
    """A ``tether run`` or ``tether worker`` in the background on a one-trial digits spec."""

    name: str
    url: str
    process: subprocess.Popen[str]

    def training(self) -> None:
        """Wait until its trial has reported an epoch."""
        storage = open_storage(self.url)

        def training() -> bool:
            with contextlib.suppress(KeyError):
                study = optuna.load_study(study_name=f"{self.name}/standard", storage=storage)
                return any(t.intermediate_values for t in _running(study))
            return False

        _wait_for(training, 120, f"{self.name}: no trial started training")

    def trial(self) -> optuna.trial.FrozenTrial:
        """The interrupted trial, after checking that it was enqueued again, clean."""
        study = optuna.load_study(
            study_name=f"{self.name}/standard", storage=open_storage(self.url)
        )
        trial, retry = study.get_trials(deepcopy=False)
        assert retry.state == TrialState.WAITING  # the budget keeps the preempted trial
        assert retry.params == trial.params
        assert retry.system_attrs["retry_history"] == [trial.number]
        assert "error" not in retry.user_attrs
        return trial


def _interruptible() -> None:
    """Ctrl-C as at a terminal: a test run in the background (``cmd &``, a CI job) starts
    with SIGINT ignored, Python then leaves it ignored, and the SIGINT tests would hang."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="module")
def searches(
    tmp_path_factory: pytest.TempPathFactory, cache_dir: Path
) -> Iterator[dict[str, _Search]]:
    """Three searches started together (their start, seconds of imports each, overlaps)."""
    from tether.search.execution.studies import create_studies
    from tether.search.spec import load_spec

    work = tmp_path_factory.mktemp("signals")
    started = {}
    for name, verb in (("sigint", "run"), ("sigterm", "worker"), ("twice", "run")):
        spec = _spec(work, name)
        url = f"sqlite:///{work}/{name}.db"
        if verb == "worker":  # a `tether run` elsewhere created the studies
            create_studies(load_spec(str(spec)), open_storage(url), groups=["block1"])
        extra = ["--no-evaluate", "--no-report"] if verb == "run" else []
        process = subprocess.Popen(
            [sys.executable, "-m", "tether", verb, str(spec), "--storage", url,
             "--devices", "cpu", *extra],
            cwd=work,
            env={**os.environ, "TETHER_CACHE_DIR": str(cache_dir)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_interruptible,
        )  # fmt: skip
        started[name] = _Search(name, url, process)
    yield started
    for search in started.values():
        search.process.kill()
        search.process.communicate()


@pytest.mark.parametrize(
    ("name", "signum", "code", "reason"),
    [("sigint", signal.SIGINT, 130, "SIGINT"), ("sigterm", signal.SIGTERM, 143, "SIGTERM")],
)
def test_a_signal_stops_the_search_and_fails_the_running_trial(
    name: str, signum: int, code: int, reason: str, searches: dict[str, _Search]
) -> None:
    search = searches[name]
    search.training()
    search.process.send_signal(signum)
    _, err = search.process.communicate(timeout=60)
    assert search.process.returncode == code, err
    assert "stopping 1 running trial(s)" in err
    assert "Traceback" not in err
    trial = search.trial()
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["error"]["kind"] == "interrupted"
    assert f"stopped by {reason}" in trial.user_attrs["error"]["message"]


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (Linux /proc), children first."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        frontier = [p for p, parent in parents.items() if parent in frontier]
        found.extend(frontier)
    return found


def test_a_second_ctrl_c_quits_at_once(searches: dict[str, _Search]) -> None:
    search = searches["twice"]
    search.training()
    process = search.process
    trials = [p for p in _descendants(process.pid) if os.getpgid(p) == p]  # setsid leaders
    assert trials, "no trial process found"
    try:
        for pid in trials:  # stuck mid-batch: it cannot stop gracefully
            os.kill(pid, signal.SIGSTOP)
        process.send_signal(signal.SIGINT)
        time.sleep(1.0)
        assert process.poll() is None, "the first Ctrl-C waits for the trial"
        second = time.monotonic()
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
        quit_after = time.monotonic() - second
        states = {pid: _state(pid) for pid in trials}
    finally:
        for pid in trials:  # a stopped trial cannot even run its orphan guard
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert process.returncode == 130, err
    assert quit_after < 8, f"quit {quit_after:.1f} s after the second Ctrl-C"
    assert "killing 1 running trial(s)" in err
    trial = search.trial()
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["error"]["kind"] == "interrupted"
    assert "SIGINT (Ctrl-C) twice" in trial.user_attrs["error"]["message"]
    assert set(states.values()) <= {"gone", "Z"}, "the trial process outlived its harness"


def _state(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return "gone"
