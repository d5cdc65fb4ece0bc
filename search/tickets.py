"""An exact trial budget shared by any number of workers: tickets and heartbeats.

The process that creates a study enqueues its whole budget as WAITING trials ("tickets"):
the known-good points first, then empty ones the sampler fills in. A worker *claims* a ticket
by moving it from WAITING to RUNNING through the storage, which is atomic (a row lock in
PostgreSQL, the journal's lock in a journal file): two workers can never run the same trial,
and together they run exactly the budget, however many join. This is the step Optuna's own
``Study.ask`` takes for enqueued trials; unlike ``ask``, a worker that finds no ticket left
creates nothing and stops.

Optuna records heartbeats only inside ``Study.optimize``; since a claimed trial runs outside
it, :class:`Heartbeat` does the same job: while a trial runs, its heartbeat is written every
``heartbeat_interval`` seconds, so a worker that dies leaves a trial that goes stale, is
failed by :func:`optuna.storages.fail_stale_trials` and re-enqueued by the storage's retry
callback (a new ticket).
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
import threading
from types import TracebackType
from typing import Any
import warnings

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import TrialState


TICKETS_ATTR = "tether:tickets"


def enqueue_tickets(
    study: optuna.Study, *, n_trials: int, known: Sequence[Mapping[str, Any]] = ()
) -> int:
    """Enqueue the budget once per study (a second call does nothing); returns the count."""
    if TICKETS_ATTR in study.user_attrs:
        return 0
    points = list(known)[:n_trials]
    for params in points:
        study.enqueue_trial(dict(params), user_attrs={"tether:known_good": True})
    for _ in range(n_trials - len(points)):
        study.enqueue_trial({})
    study.set_user_attr(TICKETS_ATTR, n_trials)
    return n_trials


def waiting(study: optuna.Study) -> int:
    """How many tickets are left."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def claim(study: optuna.Study) -> optuna.Trial | None:
    """Take one WAITING trial for this worker, or ``None`` if every ticket is taken."""
    storage = study._storage  # the storage API is public; Study only hides the handle
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
                return optuna.Trial(study, frozen._trial_id)
        except UpdateFinishedTrialError:
            continue  # another worker was faster
    return None


class Heartbeat:
    """Writes a trial's heartbeat every interval while the ``with`` block runs (RDB only)."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial) -> None:
        storage = study._storage
        self._storage = storage if isinstance(storage, BaseHeartbeat) else None
        self._trial_id = trial._trial_id
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        storage = self._storage
        interval = storage.get_heartbeat_interval() if storage is not None else None
        if storage is None or not interval:
            return self
        storage.record_heartbeat(self._trial_id)

        def beat() -> None:
            while not self._stop.wait(interval):
                storage.record_heartbeat(self._trial_id)

        self._thread = threading.Thread(target=beat, name="tether-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def reap(study: optuna.Study) -> int:
    """Fail this study's stale RUNNING trials (and retry them); returns how many were failed."""
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    return len(before - after)
