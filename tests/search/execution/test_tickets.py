"""Tickets: an exact budget across workers, and stale trials failed and retried."""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import multiprocessing
from pathlib import Path
import time
import uuid

import optuna
from optuna.trial import TrialState
import pytest

from tether.search.execution.tickets import TICKETS_ATTR
from tether.search.execution.tickets import claim
from tether.search.execution.tickets import enqueue_tickets
from tether.search.execution.tickets import requeue
from tether.search.execution.tickets import waiting
from tether.search.storage import Heartbeat
from tether.search.storage import StorageOptions
from tether.search.storage import open_storage
from tether.search.storage import reap


@pytest.fixture
def pg_study(postgres_url: str) -> Iterator[tuple[str, str]]:
    name = f"test-tickets-{uuid.uuid4().hex[:8]}"
    yield postgres_url, name
    with contextlib.suppress(KeyError):
        optuna.delete_study(study_name=name, storage=open_storage(postgres_url))


def _work(url: str, name: str, seconds: float) -> list[int]:
    storage = open_storage(url)
    study = optuna.load_study(study_name=name, storage=storage)
    numbers = []
    while (trial := claim(study)) is not None:
        value = trial.suggest_float("x", 0.0, 1.0)
        time.sleep(seconds)
        study.tell(trial, value)
        numbers.append(trial.number)
    return numbers


def test_enqueue_is_once_and_known_points_come_first(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/t.db")
    assert enqueue_tickets(study, n_trials=5, known=[{"x": 0.25}]) == 5
    assert enqueue_tickets(study, n_trials=5) == 0
    assert study.user_attrs[TICKETS_ATTR] == 5
    assert waiting(study) == 5
    first = claim(study)
    assert first is not None
    assert first.suggest_float("x", 0.0, 1.0) == 0.25


def test_four_processes_on_postgres_run_the_budget_exactly(pg_study: tuple[str, str]) -> None:
    url, name = pg_study
    study = optuna.create_study(study_name=name, storage=open_storage(url), direction="maximize")
    enqueue_tickets(study, n_trials=24)
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.starmap(_work, [(url, name, 0.01)] * 4)
    numbers = sorted(n for part in results for n in part)
    assert numbers == list(range(24))
    assert all(results), "every worker got a share"
    states = [
        t.state for t in optuna.load_study(study_name=name, storage=open_storage(url)).trials
    ]
    assert states == [TrialState.COMPLETE] * 24


def test_a_dead_workers_trial_is_failed_and_retried(pg_study: tuple[str, str]) -> None:
    url, name = pg_study
    storage = open_storage(url, options=StorageOptions(heartbeat_interval=1, grace_period=2))
    study = optuna.create_study(study_name=name, storage=storage)
    enqueue_tickets(study, n_trials=1)
    trial = claim(study)
    assert trial is not None
    with Heartbeat(study, trial):
        time.sleep(1.5)  # alive: beating
    assert reap(study) == 0
    time.sleep(3)  # the worker "died": no heartbeat for longer than the grace period
    assert reap(study) == 1
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def test_a_cut_short_creation_is_completed_not_enqueued_twice() -> None:
    study = optuna.create_study()
    study.enqueue_trial({"x": 1.0}, user_attrs={"tether:known_good": True})  # then it crashed
    assert enqueue_tickets(study, n_trials=4, known=[{"x": 1.0}, {"x": 2.0}]) == 3
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.WAITING] * 4
    assert [t.system_attrs["fixed_params"] for t in trials[:2]] == [{"x": 1.0}, {"x": 2.0}]
    assert enqueue_tickets(study, n_trials=4) == 0
    assert len(study.trials) == 4


def test_requeue_enqueues_a_failed_trial_once_with_its_params_only() -> None:
    study = optuna.create_study()
    study.enqueue_trial({}, user_attrs={"tether:known_good": True})
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0.0, 1.0)})
    trial.set_user_attr("error", {"kind": "interrupted"})
    study.tell(trial, state=TrialState.FAIL)
    requeue(study, trial)
    requeue(study, trial)  # a repeat (a lost reply) makes no second ticket
    failed, retry = study.get_trials(deepcopy=False)
    assert retry.state == TrialState.WAITING
    assert retry.params == failed.params
    assert retry.system_attrs["retry_history"] == [failed.number]
    assert retry.user_attrs == {"tether:known_good": True}
