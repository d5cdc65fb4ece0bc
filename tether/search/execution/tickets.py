"""An exact trial budget shared by any number of workers: tickets.

The process that creates a study enqueues its whole budget as WAITING trials ("tickets"):
the known-good points first, then empty ones the sampler fills in. A worker *claims* a ticket
by moving it from WAITING to RUNNING through the storage, which is atomic (a row lock in
PostgreSQL, the journal's lock in a journal file): two workers can never run the same trial,
and together they run exactly the budget, however many join. This is the step Optuna's own
``Study.ask`` takes for enqueued trials; unlike ``ask``, a worker that finds no ticket left
creates nothing and stops.

A claimed trial runs under a heartbeat (:class:`~tether.search.storage.Heartbeat`), so a
worker that dies leaves a trial that goes stale and is failed and re-enqueued (a new ticket).
:class:`Dispatcher` reaps as ``Study.optimize`` does, before claiming (at most once per
heartbeat interval), and a worker that finds no ticket while another worker's trial is RUNNING
waits one grace period for it to finish or to go stale and come back as a retry.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
import logging
import math
import threading
import time
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from tether.search.storage import RetryStaleTrial
from tether.search.storage import StorageOptions
from tether.search.storage import backend_of
from tether.search.storage import frozen_of
from tether.search.storage import heartbeat_timing
from tether.search.storage import reap
from tether.search.storage import show_in_cache
from tether.search.storage import storage_of
from tether.search.storage import study_id_of
from tether.search.storage import trial_id_of


TICKETS_ATTR = "tether:tickets"

_log = logging.getLogger(__name__)


def enqueue_tickets(
    study: optuna.Study, *, n_trials: int, known: Sequence[Mapping[str, Any]] = ()
) -> int:
    """Enqueue the budget once per study; returns how many tickets this call enqueued.

    The study is marked only when the whole budget is in, so a creation cut short (a crash, a
    retried Kubernetes Job) is completed by the next call, never enqueued twice: the tickets
    already there count. Two creators racing on a new study can still both enqueue; create
    once, then start the workers.
    """
    if TICKETS_ATTR in study.user_attrs:
        return 0
    points = list(known)[:n_trials]
    already = len(study.get_trials(deepcopy=False))
    for i in range(already, n_trials):
        if i < len(points):
            study.enqueue_trial(dict(points[i]), user_attrs={"tether:known_good": True})
        else:
            study.enqueue_trial({})
    study.set_user_attr(TICKETS_ATTR, n_trials)
    return max(0, n_trials - already)


def requeue(study: optuna.Study, trial: optuna.Trial | FrozenTrial) -> None:
    """Enqueue a failed trial again, with its parameters (a preempted or interrupted trial).

    Safe to repeat: a retry already made for this trial is not made twice. The retry carries
    Optuna's ``failed_trial`` and ``retry_history`` system attributes, as a heartbeat retry.
    """
    if isinstance(trial, optuna.Trial):
        trial = storage_of(study).get_trial(trial_id_of(trial))
    options = StorageOptions.from_env()
    RetryStaleTrial(max_retry=None, reconnect_timeout=options.reconnect_timeout)(study, trial)


def waiting(study: optuna.Study) -> int:
    """How many tickets are left."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def claim(study: optuna.Study) -> optuna.Trial | None:
    """Take one WAITING trial for this worker, or ``None`` if every ticket is taken.

    On a server storage this is one short transaction
    (:meth:`tether.search.storage.ResilientRDBStorage.claim_waiting`); elsewhere the WAITING
    trials are read and tried in turn until one moves to RUNNING.
    """
    storage = storage_of(study)
    claim_waiting = getattr(backend_of(storage), "claim_waiting", None)
    if claim_waiting is not None:
        trial_id = claim_waiting(study_id_of(study))
        if trial_id is None:
            return None
        trial = optuna.Trial(study, trial_id)
        show_in_cache(storage, study_id_of(study), frozen_of(trial))
        return trial
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(trial_id_of(frozen), state=TrialState.RUNNING):
                return optuna.Trial(study, trial_id_of(frozen))
        except UpdateFinishedTrialError:
            continue  # another worker was faster
    return None


class Dispatcher:
    """Hands the tickets of several studies to the slots of one worker process, in order.

    :meth:`next` claims a ticket of the first study that has one. Before claiming it reaps
    stale trials (at most once per heartbeat interval, as ``Study.optimize`` does before each
    trial), so a dead worker's trial comes back as a ticket while the others work. When no
    ticket is left but a trial that is not this process's still runs, it waits: that trial
    either finishes, or its worker is dead and it goes stale within the grace period and is
    retried here. Storages without heartbeats (SQLite, journal) never wait.

    Thread-safe: claims are serialised (SQLite prefers one writer), the waiting is not.

    Args:
        studies: the studies, in the order their tickets are taken.
        poll: seconds between two looks while waiting (a query for the RUNNING trials).
    """

    def __init__(self, studies: Sequence[optuna.Study], *, poll: float = 2.0) -> None:
        self.studies = list(studies)
        self.poll = poll
        self._lock = threading.Lock()
        self._mine: set[int] = set()
        self._last_reap = -math.inf
        storage = storage_of(self.studies[0]) if self.studies else None
        self._timing = None if storage is None else heartbeat_timing(storage)

    def next(
        self,
        *,
        stop: threading.Event,
        skip: Callable[[int], bool] = lambda index: False,
    ) -> tuple[int, optuna.Trial] | None:
        """The index of a study and a trial claimed from it; None once no ticket is left
        (or ``stop`` is set). Studies for which ``skip(index)`` is true are passed over.

        Call :meth:`done` with the trial once it is told.
        """
        waited_until: float | None = None
        while not stop.is_set():
            with self._lock:
                if stop.is_set():
                    return None
                self._reap_if_due()
                others = False
                for index, study in enumerate(self.studies):
                    if skip(index):
                        continue
                    trial = claim(study)
                    if trial is not None:
                        self._mine.add(trial_id_of(trial))
                        return index, trial
                    others = others or self._others_running(study)
            if not others or self._timing is None:
                return None
            interval, grace = self._timing
            now = time.monotonic()
            waited_until = waited_until or now + grace + interval
            if now >= waited_until:
                return None
            stop.wait(min(self.poll, interval, waited_until - now))
        return None

    def done(self, trial: optuna.Trial) -> None:
        """``trial`` is finished: it no longer counts as this process's running trial."""
        with self._lock:
            self._mine.discard(trial_id_of(trial))

    def _others_running(self, study: optuna.Study) -> bool:
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return any(trial_id_of(t) not in self._mine for t in running)

    def _reap_if_due(self) -> None:
        if self._timing is None:
            return
        now = time.monotonic()
        if now - self._last_reap < self._timing[0]:
            return
        self._last_reap = now
        for study in self.studies:
            failed = reap(study)
            if failed:
                _log.warning(
                    "tether: [%s] %d stale trial(s) of dead workers failed and retried",
                    study.study_name,
                    failed,
                )
