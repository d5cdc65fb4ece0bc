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
callback (a new ticket). :class:`Dispatcher` reaps as Optuna does, before claiming (at most
once per heartbeat interval), and a worker that finds no ticket while another worker's trial
is RUNNING waits one grace period for it to finish or to go stale and come back as a retry.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
import contextlib
import copy
import logging
import math
import threading
import time
from types import TracebackType
from typing import Any
import warnings

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages._cached_storage import _CachedStorage
from optuna.storages._cached_storage import _StudyInfo
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from tether.search.storage import RetryStaleTrial
from tether.search.storage import StorageOptions


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
        trial = study._storage.get_trial(trial._trial_id)
    options = StorageOptions.from_env()
    with warnings.catch_warnings():  # Optuna calls its retry callbacks experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryStaleTrial(max_retry=None, reconnect_timeout=options.reconnect_timeout)
    retry(study, trial)


def waiting(study: optuna.Study) -> int:
    """How many tickets are left."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def claim(study: optuna.Study) -> optuna.Trial | None:
    """Take one WAITING trial for this worker, or ``None`` if every ticket is taken.

    On a server storage this is one short transaction
    (:meth:`tether.search.storage.ResilientRDBStorage.claim_waiting`); elsewhere the WAITING trials
    are read and tried in turn until one moves to RUNNING.
    """
    storage = study._storage  # the storage API is public; Study only hides the handle
    claim_waiting = getattr(_backend(storage), "claim_waiting", None)
    if claim_waiting is not None:
        trial_id = claim_waiting(study._study_id)
        if trial_id is None:
            return None
        trial = optuna.Trial(study, trial_id)
        _show_cache(storage, study._study_id, trial._cached_frozen_trial)
        return trial
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
                return optuna.Trial(study, frozen._trial_id)
        except UpdateFinishedTrialError:
            continue  # another worker was faster
    return None


def _backend(storage: optuna.storages.BaseStorage) -> optuna.storages.BaseStorage:
    """The storage itself, not the cache ``optuna.load_study`` wraps an RDBStorage in."""
    backend: optuna.storages.BaseStorage = getattr(storage, "_backend", storage)
    return backend


def _show_cache(storage: optuna.storages.BaseStorage, study_id: int, frozen: FrozenTrial) -> None:
    """Show a trial claimed past it to the cache ``optuna.load_study`` puts in front of an
    RDBStorage, which refuses to set parameters of a trial it has not read. It is added as
    the cache adds the trials it reads: unfinished, so that it is read again next time."""
    if not isinstance(storage, _CachedStorage):
        return
    with storage._lock:
        info = storage._studies.setdefault(study_id, _StudyInfo())
        storage._add_trials_to_cache(study_id, [frozen])
        info.unfinished_trial_ids.add(frozen._trial_id)


def heartbeat_timing(storage: optuna.storages.BaseStorage) -> tuple[float, float] | None:
    """``(interval, grace period)`` in seconds of a storage with heartbeats, else None."""
    if not isinstance(storage, BaseHeartbeat):
        return None
    interval = storage.get_heartbeat_interval()
    if not interval:
        return None
    grace = getattr(_backend(storage), "grace_period", None) or 2 * interval
    return float(interval), float(grace)


class Heartbeat:
    """Writes a trial's heartbeat every interval while the ``with`` block runs (RDB only).

    A beat that fails (the server is away longer than the storage retries) is logged and the
    next one tried at the next interval: the thread never dies while the trial runs.
    """

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
                try:
                    storage.record_heartbeat(self._trial_id)
                except Exception as error:
                    _log.warning("tether: a heartbeat failed (%s)", error)

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
    """Fail this study's stale RUNNING trials (and retry them); returns how many were failed.

    What :func:`optuna.storages.fail_stale_trials` does, counting only the trials this call
    failed (another reaper may fail some of them first; workers finish others meanwhile).
    """
    storage = study._storage
    if heartbeat_timing(storage) is None:
        return 0
    assert isinstance(storage, BaseHeartbeat)
    failed = []
    for trial_id in storage._get_stale_trial_ids(study._study_id):
        with contextlib.suppress(UpdateFinishedTrialError):  # another reaper was faster
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                failed.append(trial_id)
    callback = storage.get_heartbeat_stale_trial_callback()
    if callback is not None:
        for trial_id in failed:
            callback(study, copy.deepcopy(storage.get_trial(trial_id)))
    return len(failed)


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
        storage = self.studies[0]._storage if self.studies else None
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
                        self._mine.add(trial._trial_id)
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
            self._mine.discard(trial._trial_id)

    def _others_running(self, study: optuna.Study) -> bool:
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return any(t._trial_id not in self._mine for t in running)

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
