"""Everything Tether knows of Optuna's insides, in one place.

Optuna's public API has no way to claim one WAITING trial in one short transaction, to write
several trial attributes at once, to show its storage cache a trial claimed past it, or to
list the stale trials its heartbeats found; Tether needs all four to run an exact budget on
hundreds of workers. This module is the only one that touches Optuna's private names
(underscored modules, classes, methods and attributes), so an Optuna upgrade that moves them
is mended here, and ``tests/search/storage/`` (Optuna's own ``StorageTestCase`` among them)
says whether it still holds. Checked against Optuna 5.0 and 5.1.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from collections.abc import Container
from datetime import datetime
import json
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages import RDBStorage
from optuna.storages._cached_storage import _CachedStorage
from optuna.storages._cached_storage import _StudyInfo
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages._rdb.models import StudyModel
from optuna.storages._rdb.models import TrialModel
from optuna.storages._rdb.models import TrialSystemAttributeModel
from optuna.storages._rdb.models import TrialUserAttributeModel
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial
from optuna.trial import TrialState
import sqlalchemy
from sqlalchemy.dialects import postgresql
import sqlalchemy.orm


CLAIM_ATTR = "tether:claim"
"""The system attribute a claim writes: which worker's call took the trial."""


# --- handles that Study and Trial keep private --------------------------------------------


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage a study reads and writes through (its cache, for an RDB storage)."""
    storage: optuna.storages.BaseStorage = study._storage
    return storage


def backend_of(storage: optuna.storages.BaseStorage) -> optuna.storages.BaseStorage:
    """The storage itself, not the cache ``optuna.load_study`` wraps an RDBStorage in."""
    if isinstance(storage, _CachedStorage):
        backend: optuna.storages.BaseStorage = storage._backend
        return backend
    return storage


def study_id_of(study: optuna.Study) -> int:
    """The storage's id of ``study``."""
    study_id: int = study._study_id
    return study_id


def trial_id_of(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of ``trial`` (``number`` counts within the study, this across it)."""
    trial_id: int = trial._trial_id
    return trial_id


def frozen_of(trial: optuna.Trial) -> FrozenTrial:
    """The trial as its study cached it when the trial was made."""
    frozen: FrozenTrial = trial._cached_frozen_trial
    return frozen


def show_in_cache(storage: optuna.storages.BaseStorage, study_id: int, trial: FrozenTrial) -> None:
    """Show a trial claimed past it to the cache ``optuna.load_study`` puts in front of an
    RDBStorage, which refuses to set parameters of a trial it has not read. It is added as
    the cache adds the trials it reads: unfinished, so that it is read again next time."""
    if not isinstance(storage, _CachedStorage):
        return
    with storage._lock:
        info = storage._studies.setdefault(study_id, _StudyInfo())
        storage._add_trials_to_cache(study_id, [trial])
        info.unfinished_trial_ids.add(trial._trial_id)


def rdb_session(storage: RDBStorage) -> Any:
    """An Optuna session of an RDB storage: committed at the end, errors wrapped as Optuna
    wraps them (:class:`~optuna.exceptions.StorageInternalError`)."""
    return _create_scoped_session(storage.scoped_session)


# --- Optuna's heartbeats (RDB storages) ---------------------------------------------------


def heartbeats_of(storage: optuna.storages.BaseStorage) -> BaseHeartbeat | None:
    """``storage`` as Optuna's heartbeat interface, if it records heartbeats (an RDBStorage
    given an interval, or a :class:`JournalHeartbeatBase`); else None."""
    if isinstance(storage, BaseHeartbeat) and storage.get_heartbeat_interval():
        return storage
    return None


def stale_trial_ids(heartbeats: BaseHeartbeat, study_id: int) -> list[int]:
    """The RUNNING trials of a study whose heartbeat is older than the grace period."""
    return heartbeats._get_stale_trial_ids(study_id)


class JournalHeartbeatBase(JournalStorage, BaseHeartbeat):
    """A :class:`~optuna.storages.JournalStorage` that Optuna's heartbeat machinery accepts
    (``Study.optimize``, ``fail_stale_trials``) and Tether's too: Optuna has no heartbeats for
    journal storages, so :class:`~tether.search.storage.heartbeat.HeartbeatJournalStorage` brings
    them; this base only connects its public methods to Optuna's private hook."""

    @abc.abstractmethod
    def stale_trial_ids(self, study_id: int) -> list[int]:
        """The RUNNING trials of a study whose heartbeat is older than the grace period."""

    @abc.abstractmethod
    def heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        """What is done with a stale trial once it has been failed (e.g. enqueue it again)."""

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self.stale_trial_ids(study_id)

    def get_heartbeat_stale_trial_callback(
        self,
    ) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self.heartbeat_stale_trial_callback()


# --- RDB storages: what goes under the public API ------------------------------------------

REPEATABLE = (
    "_get_trials",  # under get_all_trials, and what optuna's cache calls
    "_get_best_trial_id",  # under get_best_trial
    "_get_stale_trial_ids",
    "_set_trial_param",  # under set_trial_param
)
"""Private RDBStorage methods that only read or upsert: safe to repeat after a lost
connection (the public ones are listed by :mod:`tether.search.storage.rdb`)."""


class InsideRDBStorage(RDBStorage):
    """An :class:`~optuna.storages.RDBStorage` with the three operations Tether adds under
    its public API. Each is one attempt; :class:`~tether.search.storage.rdb.ResilientRDBStorage`
    retries them."""

    def claim_oldest_waiting(self, study_id: int, token: str, tried: list[int]) -> int | None:
        """Move the study's oldest WAITING trial to RUNNING, marking it with ``token``.

        One short transaction: ``SELECT ... FOR UPDATE SKIP LOCKED`` then an ``UPDATE`` that
        also requires the state to be WAITING, so concurrent workers take different trials
        without waiting on each other's row locks, and none is taken twice, on any database.
        The same transaction writes ``token`` to the trial's system attribute
        ``tether:claim``. Returns the trial id (None if none was WAITING); ``tried`` gets the
        id of each trial it tried, as it goes (a lost reply leaves the last one to check).
        """
        with rdb_session(self) as session:
            while True:
                row = session.execute(
                    sqlalchemy.select(TrialModel.trial_id)
                    .where(
                        TrialModel.study_id == study_id,
                        TrialModel.state == TrialState.WAITING,
                    )
                    .order_by(TrialModel.trial_id)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                ).first()
                if row is None:
                    return None
                tried.append(row[0])
                taken = session.execute(
                    sqlalchemy.update(TrialModel)
                    .where(
                        TrialModel.trial_id == row[0],
                        TrialModel.state == TrialState.WAITING,
                    )
                    .values(state=TrialState.RUNNING, datetime_start=datetime.now())
                    .execution_options(synchronize_session=False)
                )
                if taken.rowcount == 1:
                    self._set_trial_attr_without_commit(
                        session, TrialSystemAttributeModel, row[0], CLAIM_ATTR, token
                    )
                    return row[0]

    def upsert_trial_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        """Set several user attributes of a trial in one transaction (one statement on
        PostgreSQL)."""
        with rdb_session(self) as session:
            if self.engine.name != "postgresql":
                for key, value in attrs.items():
                    self._set_trial_attr_without_commit(
                        session, TrialUserAttributeModel, trial_id, key, value
                    )
                return
            trial = TrialModel.find_or_raise_by_id(trial_id, session)
            self.check_trial_is_updatable(trial_id, trial.state)
            rows = [
                {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
                for key, value in attrs.items()
            ]
            insert = postgresql.insert(TrialUserAttributeModel).values(rows)
            session.execute(
                insert.on_conflict_do_update(
                    index_elements=[TrialUserAttributeModel.trial_id, TrialUserAttributeModel.key],
                    set_={"value_json": insert.excluded.value_json},
                )
            )

    def _get_trials(
        self,
        study_id: int,
        states: Container[TrialState] | None,
        included_trial_ids: set[int],
        trial_id_greater_than: int,
    ) -> list[FrozenTrial]:
        """What Optuna's cache (``optuna.load_study`` puts one in front of every RDBStorage)
        reads before each sampling and each pruning: new trials, and again every trial it
        holds unfinished. With the budget enqueued as tickets, those are all the WAITING ones,
        hundreds, read whole many times per trial. A WAITING trial does not change until it is
        claimed, so those the cache holds (``included_trial_ids``) are left out: one query for
        the ids and states, then only the trials that may have changed.
        """
        if states is not None or not included_trial_ids:
            return super()._get_trials(study_id, states, included_trial_ids, trial_id_greater_than)
        with rdb_session(self) as session:
            StudyModel.find_or_raise_by_id(study_id, session)
            rows = session.execute(
                sqlalchemy.select(TrialModel.trial_id, TrialModel.state).where(
                    TrialModel.study_id == study_id,
                    sqlalchemy.or_(
                        TrialModel.trial_id > trial_id_greater_than,
                        TrialModel.trial_id.in_(included_trial_ids),
                    ),
                )
            ).all()
            wanted = [
                trial_id
                for trial_id, state in rows
                if not (state == TrialState.WAITING and trial_id in included_trial_ids)
            ]
            if not wanted:
                return []
            loaded = (
                session.query(TrialModel)
                .options(
                    sqlalchemy.orm.selectinload(TrialModel.params),
                    sqlalchemy.orm.selectinload(TrialModel.values),
                    sqlalchemy.orm.selectinload(TrialModel.user_attributes),
                    sqlalchemy.orm.selectinload(TrialModel.system_attributes),
                    sqlalchemy.orm.selectinload(TrialModel.intermediate_values),
                )
                .filter(TrialModel.trial_id.in_(wanted))
                .order_by(TrialModel.trial_id)
                .all()
            )
            return [self._build_frozen_trial_from_trial_model(trial) for trial in loaded]
