"""Many worker processes on one storage: the budget runs exactly, on bounded connections.

The workers are separate processes (spawned interpreters, each opening its own storage) that
run :class:`tether.search.execution.runner.TicketRunner`, the loop of ``tether worker`` without the
study spec: claim a ticket, heartbeat, sample, fork a trial process, tell. Their trials run
:func:`tether.testing.targets.trivial_target` instead of a fine-tuning run, so what is
measured is the harness and the storage. (``tether worker`` itself would also import torch for the
spec's model, 5 s and 1 GB per process, which 8 workers on this 2-core machine cannot afford.)
"""

from __future__ import annotations

from collections.abc import Callable
from multiprocessing.process import BaseProcess
from pathlib import Path
import threading
import time

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from tests.search.conftest import pg_connect
from tests.search.conftest import trials_ran
from tether.search.execution.tickets import claim
from tether.search.execution.tickets import enqueue_tickets
from tether.search.storage import StorageOptions
from tether.search.storage import open_storage


WORKER = "tether-worker"  # the application_name of the workers' connections
POOL = StorageOptions(pool_size=2, max_overflow=0, application_name=WORKER)


def _budget(url: str, n_trials: int) -> optuna.Study:
    storage = open_storage(url, options=StorageOptions(application_name="tether-test"))
    study = optuna.create_study(study_name="scale", storage=storage, direction="maximize")
    enqueue_tickets(study, n_trials=n_trials)
    return study


def _wait(processes: list[BaseProcess], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    assert not any(p.is_alive() for p in processes), "a worker is still running"
    assert [p.exitcode for p in processes] == [0] * len(processes)


def _assert_exact(study: optuna.Study, n_trials: int) -> None:
    trials = study.get_trials(deepcopy=False)
    assert sorted(t.number for t in trials) == list(range(n_trials)), "a ticket lost or added"
    assert len({t._trial_id for t in trials}) == n_trials
    states = {state: sum(t.state == state for t in trials) for state in TrialState}
    assert states[TrialState.COMPLETE] == n_trials, states
    assert all(len(t.user_attrs["curve"]) == 1 for t in trials), "every trial ran once, whole"


class _PeakConnections:
    """Polls ``pg_stat_activity`` for the workers' connections to one database."""

    def __init__(self, url: str) -> None:
        self.peak = 0
        self._url = url
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> _PeakConnections:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        with pg_connect(self._url) as connection:
            while not self._stop.wait(0.02):
                row = connection.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND application_name = %s",
                    (WORKER,),
                ).fetchone()
                self.peak = max(self.peak, int(row[0]))


def test_the_pool_is_bounded_and_pre_pinged(pg_database: str) -> None:
    storage = open_storage(pg_database, options=POOL)
    engine = storage.engine  # type: ignore[attr-defined]
    assert engine.pool.size() == 2
    assert engine.pool._max_overflow == 0
    assert engine.pool._pre_ping is True
    with engine.connect() as connection:
        name = connection.exec_driver_sql("SHOW application_name").scalar()
    assert name == WORKER


def test_eight_workers_on_postgres_run_400_trials_exactly(
    pg_database: str, start_workers: Callable[..., list[BaseProcess]], tmp_path: Path
) -> None:
    study = _budget(pg_database, 400)
    started = time.monotonic()
    with _PeakConnections(pg_database) as connections:
        workers = start_workers(8, pg_database, ["scale"], options=vars(POOL))
        _wait(workers, 240)
    seconds = time.monotonic() - started
    _assert_exact(study, 400)
    assert trials_ran(tmp_path / "logs") == 400, "a ticket was run twice"
    ran = {t.user_attrs["worker"] for t in study.get_trials(deepcopy=False)}
    print(f"400 trials by {len(ran)} workers in {seconds:.1f} s; "
          f"peak {connections.peak} connections")  # fmt: skip
    assert len(ran) >= 2
    assert 0 < connections.peak <= 8 * (POOL.pool_size + POOL.max_overflow) + 2


def test_four_workers_on_a_journal_file_run_100_trials_exactly(
    tmp_path: Path, start_workers: Callable[..., list[BaseProcess]]
) -> None:
    url = f"journal:{tmp_path}/scale.journal"
    study = _budget(url, 100)
    _wait(start_workers(4, url, ["scale"]), 120)
    study = optuna.load_study(study_name="scale", storage=open_storage(url))
    _assert_exact(study, 100)
    assert trials_ran(tmp_path / "logs") == 100, "a ticket was run twice"


def test_the_cache_in_front_of_postgres_sees_every_change_of_the_tickets(
    pg_database: str,
) -> None:
    """Optuna's cache reads again only the tickets that may have changed (not the WAITING ones
    it holds): what it returns is what a plain read of the storage returns."""
    study = _budget(pg_database, 6)
    assert len(study.get_trials(deepcopy=False)) == 6  # the cache now holds 6 WAITING tickets
    elsewhere = optuna.load_study(study_name="scale", storage=open_storage(pg_database))
    first, second = claim(study), claim(elsewhere)  # the second by another worker
    assert first is not None
    assert second is not None
    first.suggest_float("x", 0.0, 1.0)
    study.tell(first, 0.5)
    study.enqueue_trial({"x": 0.25})
    plain = RDBStorage(pg_database)
    try:
        expected = plain.get_all_trials(study._study_id, deepcopy=False)
    finally:
        plain.engine.dispose()
    seen = study.get_trials(deepcopy=False)
    assert [(t.number, t.state, t.params, t.value) for t in seen] == [
        (t.number, t.state, t.params, t.value) for t in expected
    ]
    assert [t.state for t in seen[:3]] == [TrialState.COMPLETE, TrialState.RUNNING,
                                           TrialState.WAITING]  # fmt: skip
