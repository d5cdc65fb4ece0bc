"""Heartbeats: a running trial says it is alive; a silent one is failed and enqueued again.

Optuna records heartbeats only inside ``Study.optimize`` and only on RDB storages. Tether
runs claimed trials outside ``optimize``, on PostgreSQL and on journal files, so:

- :class:`Heartbeat` writes a trial's heartbeat every interval while the trial runs;
- :class:`HeartbeatJournalStorage` is a journal storage with heartbeats of Tether's own (a trial
  system attribute ``tether:heartbeat``, the wall-clock time of the last beat), which Optuna's
  own heartbeat machinery accepts too;
- :func:`reap` fails a study's stale RUNNING trials, as :func:`optuna.storages.fail_stale_trials`
  does, and hands each to the storage's retry callback (a new ticket with its parameters).

A worker that dies thus leaves a trial that goes stale and comes back as a ticket. SQLite has
no heartbeats: it is for one process, and a trial that process left RUNNING stays so.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
import time
from types import TracebackType

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from tether.search.storage._optuna import JournalHeartbeatBase
from tether.search.storage._optuna import backend_of
from tether.search.storage._optuna import heartbeats_of
from tether.search.storage._optuna import stale_trial_ids
from tether.search.storage._optuna import storage_of
from tether.search.storage._optuna import study_id_of
from tether.search.storage._optuna import trial_id_of
from tether.search.storage.callbacks import RetryStaleTrial


HEARTBEAT_ATTR = "tether:heartbeat"
_log = logging.getLogger(__name__)


class HeartbeatJournalStorage(JournalHeartbeatBase):
    """A journal storage whose running trials write heartbeats, as RDB storages' do.

    A beat sets the trial's system attribute ``tether:heartbeat`` to the time (seconds since
    the epoch): one short line appended to the journal. A RUNNING trial is stale when its last
    beat, or its start if it has none yet, is more than ``grace_period`` seconds old; every
    process reading the journal must then share one clock, as on one machine.

    Args:
        path: the journal file.
        heartbeat_interval: seconds between two beats of a running trial.
        grace_period: seconds of silence after which a RUNNING trial is stale.
        max_retry: how many times a stale trial is enqueued again.
    """

    def __init__(
        self,
        path: str,
        *,
        heartbeat_interval: int,
        grace_period: int,
        max_retry: int | None,
    ) -> None:
        super().__init__(JournalFileBackend(path))
        self.path = path
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self._callback = RetryStaleTrial(max_retry=max_retry, reconnect_timeout=0.0)

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

    def get_heartbeat_interval(self) -> int:
        return self.heartbeat_interval

    def heartbeat_stale_trial_callback(self) -> RetryStaleTrial:
        return self._callback

    def stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            started = trial.datetime_start.timestamp() if trial.datetime_start else now
            beat = trial.system_attrs.get(HEARTBEAT_ATTR)
            last = max(started, float(beat)) if isinstance(beat, int | float) else started
            if now - last > self.grace_period:
                stale.append(trial_id_of(trial))
        return stale


def heartbeat_timing(storage: optuna.storages.BaseStorage) -> tuple[float, float] | None:
    """``(interval, grace period)`` in seconds of a storage with heartbeats, else None."""
    heartbeats = heartbeats_of(storage)
    interval = None if heartbeats is None else heartbeats.get_heartbeat_interval()
    if interval is None:
        return None
    grace = getattr(backend_of(storage), "grace_period", None) or 2 * interval
    return float(interval), float(grace)


class Heartbeat:
    """Writes a trial's heartbeat every interval while the ``with`` block runs.

    Nothing happens on a storage without heartbeats. A beat that fails (the server is away
    longer than the storage retries) is logged and the next one tried at the next interval:
    the thread never dies while the trial runs.
    """

    def __init__(self, study: optuna.Study, trial: optuna.Trial) -> None:
        self._heartbeats = heartbeats_of(storage_of(study))
        self._trial_id = trial_id_of(trial)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        heartbeats = self._heartbeats
        interval = None if heartbeats is None else heartbeats.get_heartbeat_interval()
        if heartbeats is None or interval is None:
            return self
        record = heartbeats.record_heartbeat
        record(self._trial_id)

        def beat() -> None:
            while not self._stop.wait(interval):
                try:
                    record(self._trial_id)
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
    storage = storage_of(study)
    heartbeats = heartbeats_of(storage)
    if heartbeats is None:
        return 0
    failed = []
    for trial_id in stale_trial_ids(heartbeats, study_id_of(study)):
        with contextlib.suppress(UpdateFinishedTrialError):  # another reaper was faster
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                failed.append(trial_id)
    callback = heartbeats.get_heartbeat_stale_trial_callback()
    if callback is not None:
        for trial_id in failed:
            frozen: FrozenTrial = copy.deepcopy(storage.get_trial(trial_id))
            callback(study, frozen)
    return len(failed)
