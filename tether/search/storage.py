"""Storage URLs -> Optuna storages, plain Optuna so optuna-dashboard and the CLI read them as is.

========================================  ===============================================
``sqlite:///tether.db`` (default)          one process on one machine (its slots are threads)
``journal:./tether.journal``              several processes on one machine, no server
``postgresql+psycopg://user@host/db``      many workers on many machines; heartbeats, and
                                          trials of dead workers are failed and retried
========================================  ===============================================

``postgresql://`` is read as ``postgresql+psycopg://`` (psycopg 3; SQLAlchemy 2.1's default
driver). Passwords never leave this module unmasked: :func:`mask_url` is what every message,
log line and stored attribute shows.

**SQLite is one process.** Its file lock serialises writers, and Optuna does not recommend it
for parallel optimisation; so the process that searches a SQLite file holds it
(:func:`hold_single_process`) and a second one is refused with exit code 2. Several slots
inside one ``tether run`` share the file through threads and are fine.

**Connections.** Each process opens one engine with a bounded pool: at most
``pool_size + max_overflow`` connections (2 + 0 by default), whatever its number of slots and
heartbeat threads, which share them (a session lasts one statement or one short transaction).
``N`` worker processes thus hold at most ``2 N`` connections (plus one per ``tether status``,
``reap`` or dashboard): size PostgreSQL's ``max_connections`` (100 by default) for it. They
show in ``pg_stat_activity`` with ``application_name = 'tether'``. ``pool_pre_ping`` replaces
a connection the server dropped before it is used.

**Connection loss.** A statement in flight when the server drops the connection fails;
:class:`ResilientRDBStorage` retries such failures (:func:`is_transient`) with a bounded
backoff for up to ``reconnect_timeout`` seconds (60, ``$TETHER_RECONNECT_TIMEOUT``), so a
worker waits out a server restart or a network cut and goes on. Only operations that are safe
to repeat are retried: reads, upserts (attributes, parameters, intermediate values,
heartbeats), and state changes, whose retry first reads whether the lost attempt was committed
(a trial is told exactly once, a ticket claimed once). Creating a study or a trial is not
retried, except the re-enqueueing of a stale trial, which checks first whether it already
happened. Opening a storage retries a connection dropped midway, never a refused one: a wrong
port, user or database is bad input and fails at once.
"""

from __future__ import annotations

import atexit
from collections.abc import Callable
from collections.abc import Container
from collections.abc import Sequence
import contextlib
import copy
from dataclasses import dataclass
from datetime import datetime
import fcntl
import functools
import json
import logging
import os
from pathlib import Path
import random
import re
import socket
import threading
import time
from typing import Any
from typing import TypeVar
import uuid
import warnings

import optuna
from optuna.exceptions import StorageInternalError
from optuna.storages import JournalStorage
from optuna.storages import RDBStorage
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages._rdb.models import StudyModel
from optuna.storages._rdb.models import TrialModel
from optuna.storages._rdb.models import TrialSystemAttributeModel
from optuna.storages._rdb.models import TrialUserAttributeModel
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial
from optuna.trial import TrialState
import sqlalchemy
from sqlalchemy.dialects import postgresql
import sqlalchemy.exc
import sqlalchemy.orm

from tether.errors import ConfigError


DEFAULT_URL = "sqlite:///tether.db"
ENV_VAR = "TETHER_STORAGE"
APPLICATION_NAME = "tether"
CLAIM_ATTR = "tether:claim"

_log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class StorageOptions:
    """Heartbeats, retries and connections of a server storage (PostgreSQL, MySQL).

    A worker records a heartbeat every ``heartbeat_interval`` seconds while a trial runs; a
    RUNNING trial silent for ``grace_period`` seconds is failed by the next worker (or by
    ``tether reap``) and re-enqueued up to ``max_retry`` times. The grace period is generous
    because a busy GPU host can stall the heartbeat thread (Optuna #3198).

    A process holds at most ``pool_size + max_overflow`` connections; ``application_name``
    names them in ``pg_stat_activity``. A statement cut off by a lost connection is retried for
    up to ``reconnect_timeout`` seconds before the error is raised. A new connection waits
    ``connect_timeout`` seconds for the server at most (libpq waits forever by default, e.g.
    for a host behind a firewall that drops packets); a URL's own ``connect_timeout=`` wins.
    """

    heartbeat_interval: int = 30
    grace_period: int = 120
    max_retry: int = 2
    pool_size: int = 2
    max_overflow: int = 0
    application_name: str = APPLICATION_NAME
    reconnect_timeout: float = 60.0
    connect_timeout: int = 10

    def __post_init__(self) -> None:
        for key in ("heartbeat_interval", "grace_period", "pool_size", "connect_timeout"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)!r}")
        for key in ("max_retry", "max_overflow", "reconnect_timeout"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)!r}")

    @classmethod
    def from_env(cls) -> StorageOptions:
        """Defaults, overridden by ``$TETHER_HEARTBEAT_INTERVAL``, ``$TETHER_GRACE_PERIOD``,
        ``$TETHER_RECONNECT_TIMEOUT`` and ``$TETHER_CONNECT_TIMEOUT``."""
        defaults = cls()
        try:
            return cls(
                heartbeat_interval=int(
                    os.environ.get("TETHER_HEARTBEAT_INTERVAL", defaults.heartbeat_interval)
                ),
                grace_period=int(os.environ.get("TETHER_GRACE_PERIOD", defaults.grace_period)),
                reconnect_timeout=float(
                    os.environ.get("TETHER_RECONNECT_TIMEOUT", defaults.reconnect_timeout)
                ),
                connect_timeout=int(
                    os.environ.get("TETHER_CONNECT_TIMEOUT", defaults.connect_timeout)
                ),
            )
        except ValueError as error:
            raise ConfigError(
                "TETHER_HEARTBEAT_INTERVAL / TETHER_GRACE_PERIOD / TETHER_RECONNECT_TIMEOUT / "
                f"TETHER_CONNECT_TIMEOUT: {error}"
            ) from None


_PASSWORD = re.compile(r"(?P<head>[a-z0-9+.-]+://[^:/@]+:)(?P<password>[^@]*)(?P<tail>@)", re.I)


def mask_url(url: str) -> str:
    """``postgresql+psycopg://tether:secret@db/x`` -> ``postgresql+psycopg://tether:***@db/x``."""
    return _PASSWORD.sub(r"\g<head>***\g<tail>", url)


def resolve_url(url: str | None) -> str:
    """The storage URL: the argument, else ``$TETHER_STORAGE``, else ``sqlite:///tether.db``."""
    return url or os.environ.get(ENV_VAR) or DEFAULT_URL


def open_storage(
    url: str, *, options: StorageOptions | None = None, create: bool = True
) -> optuna.storages.BaseStorage:
    """Open (creating if needed) the Optuna storage behind ``url``.

    With ``create=False`` (every verb but ``tether run``) a SQLite or journal file that does
    not exist is an error rather than a new, empty storage: a typo must not create files.

    A server URL gives a :class:`ResilientRDBStorage` with a bounded pool (see the module's
    docstring), a SQLite URL a plain :class:`~optuna.storages.RDBStorage`, ``journal:PATH`` a
    :class:`~optuna.storages.JournalStorage`.

    Raises:
        ConfigError: (kind ``storage``) an unknown scheme, an unreachable server, a wrong
            password, a missing database: one line, password masked.
    """
    options = options or StorageOptions.from_env()
    if url.startswith("journal:"):
        path = url.removeprefix("journal:").removeprefix("//")
        if not path:
            raise ConfigError(
                "a journal storage needs a file: journal:./tether.journal", kind="storage"
            )
        if not create and not os.path.exists(path):
            raise ConfigError(_no_file(url, path), kind="storage")
        return JournalStorage(JournalFileBackend(path))
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if not (
        scheme.startswith("sqlite")
        or scheme.startswith("postgresql")
        or scheme.startswith("mysql")
    ):
        raise ConfigError(
            f"storage {mask_url(url)!r} is not a storage URL; use sqlite:///tether.db, "
            "journal:./tether.journal or postgresql+psycopg://user@host/db",
            kind="storage",
        )
    if not create and scheme.startswith("sqlite"):
        database = sqlalchemy.make_url(url).database
        if database and database != ":memory:" and not os.path.exists(database):
            raise ConfigError(_no_file(url, database), kind="storage")
    try:
        with warnings.catch_warnings():
            # heartbeats and their retry callback are "experimental" since Optuna 2.8/2.9.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if scheme.startswith("sqlite"):
                return RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
            return retry_transient(
                lambda: _server(url, scheme, options),
                timeout=options.reconnect_timeout,
                transient=is_lost_connection,
            )
    except ImportError as error:
        raise ConfigError(
            f"storage {mask_url(url)}: driver missing ({error.name}); "
            "install tether[postgres] for PostgreSQL",
            kind="storage",
        ) from None
    except Exception as error:  # SQLAlchemy's OperationalError and friends: one line, masked
        raise ConfigError(
            f"cannot open storage {mask_url(url)}: {_reason(error)}", kind="storage"
        ) from None


def _no_file(url: str, path: str) -> str:
    return f"storage {mask_url(url)}: no such file {path}; tether run creates it"


def _server(url: str, scheme: str, options: StorageOptions) -> ResilientRDBStorage:
    engine_kwargs: dict[str, Any] = {
        "pool_pre_ping": True,
        "pool_size": options.pool_size,
        "max_overflow": options.max_overflow,
        "pool_recycle": 1800,
    }
    if scheme.startswith("postgresql"):
        engine_kwargs["connect_args"] = {"application_name": options.application_name}
        if "connect_timeout=" not in url:
            engine_kwargs["connect_args"]["connect_timeout"] = options.connect_timeout
    return ResilientRDBStorage(
        url,
        engine_kwargs=engine_kwargs,
        reconnect_timeout=options.reconnect_timeout,
        heartbeat_interval=options.heartbeat_interval,
        grace_period=options.grace_period,
        heartbeat_stale_trial_callback=RetryStaleTrial(
            max_retry=options.max_retry, reconnect_timeout=options.reconnect_timeout
        ),
    )


def describe_error(error: BaseException) -> str:
    """The first line of a storage error (the driver's own message), passwords masked."""
    return _reason(error)


def is_storage_error(error: BaseException) -> bool:
    """Whether ``error`` came from the storage (SQLAlchemy, the driver, Optuna's wrapper)."""
    return isinstance(error, sqlalchemy.exc.SQLAlchemyError | StorageInternalError)


def _reason(error: BaseException) -> str:
    original = getattr(error, "orig", None) or error
    text = str(original).strip().splitlines()
    return mask_url(text[0] if text else type(original).__name__)


def study_names(storage: optuna.storages.BaseStorage) -> set[str]:
    """The names of the studies a storage holds."""
    return {
        s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
    }


# --- connection loss -------------------------------------------------------------------------


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) is a lost or refused database connection.

    SQLAlchemy raises ``OperationalError`` or ``InterfaceError`` for those (``server closed
    the connection unexpectedly``, ``terminating connection due to administrator command``,
    ``connection refused`` while the server restarts); Optuna wraps what happens inside its
    sessions in :class:`~optuna.exceptions.StorageInternalError`.
    """
    return _database_error(error, lost_only=False)


def is_lost_connection(error: BaseException) -> bool:
    """Whether ``error`` is an established connection that the server dropped; not a server
    that refuses to connect (a wrong port, user or database is bad input, not transient)."""
    return _database_error(error, lost_only=True)


# What libpq and psycopg say when an established connection goes (SQLAlchemy's psycopg2
# dialect knows the same list; its psycopg 3 dialect asks the connection, which is not
# always at hand, e.g. while the schema is checked).
_LOST = (
    "terminating connection",
    "closed the connection",
    "connection not open",
    "could not receive data from server",
    "could not send data to server",
    "connection already closed",
    "consuming input failed",
)


def _database_error(error: BaseException, *, lost_only: bool) -> bool:
    """Walks the chain of causes: Optuna wraps errors in StorageInternalError, and SQLAlchemy
    raises PendingRollbackError when code goes on using a session whose connection died."""
    seen: BaseException | None = error
    for _ in range(6):
        if seen is None:
            return False
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and (
            seen.connection_invalidated or any(text in str(seen.orig) for text in _LOST)
        ):
            return True
        if not lost_only and isinstance(
            seen, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError
        ):
            return True
        if not isinstance(seen, StorageInternalError | sqlalchemy.exc.PendingRollbackError):
            return False
        seen = seen.__cause__ or seen.__context__
    return False


def retry_transient(
    call: Callable[[], T],
    *,
    timeout: float,
    recover: Callable[[], T | None] | None = None,
    transient: Callable[[BaseException], bool] = is_transient,
) -> T:
    """``call()``, repeated while it fails with ``transient`` errors, up to ``timeout``
    seconds, with an exponential backoff (50 ms doubling to 2 s, jittered).

    ``recover`` runs before each repetition; if it returns something other than None, that is
    the result (the lost attempt turned out to have been committed).

    Raises:
        the last error, once ``timeout`` has passed; any other error at once.
    """
    deadline = time.monotonic() + timeout
    delay = 0.05
    first = True
    while True:
        try:
            return call()
        except Exception as error:
            if not transient(error) or time.monotonic() + delay > deadline:
                raise
            if first:
                _log.warning(
                    "tether: storage connection lost (%s); retrying for up to %g s",
                    _reason(error.__cause__ or error),
                    timeout,
                )
                first = False
        time.sleep(delay * random.uniform(0.5, 1.0))
        delay = min(2 * delay, 2.0)
        if recover is not None:
            try:
                found = recover()
            except Exception as error:
                if not transient(error):
                    raise
                continue
            if found is not None:
                return found


# Reads, and writes that are upserts: repeating them is harmless.
_REPEATABLE = (
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "get_all_studies",
    "get_trial_param",
    "get_trial_id_from_study_id_trial_number",
    "get_trial",
    "_get_trials",  # under get_all_trials, and what optuna's cache calls
    "_get_best_trial_id",  # under get_best_trial
    "_get_stale_trial_ids",
    "set_study_user_attr",
    "set_study_system_attr",
    "_set_trial_param",  # under set_trial_param
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "record_heartbeat",
)


class ResilientRDBStorage(RDBStorage):
    """An :class:`~optuna.storages.RDBStorage` that survives lost connections.

    The repeatable operations (reads and upserts, listed in ``_REPEATABLE``) are retried by
    :func:`retry_transient`. A state change is retried after reading what the lost attempt
    left: a trial already in the requested state (with the requested values) means it was
    committed, and the call succeeds; a trial another worker finished meanwhile raises
    :class:`~optuna.exceptions.UpdateFinishedTrialError` as usual. A claim (WAITING ->
    RUNNING) whose trial is found RUNNING is taken as this worker's: a trial run twice costs
    time, a trial left RUNNING by nobody would never be retried.
    """

    def __init__(self, url: str, *, reconnect_timeout: float = 60.0, **kwargs: Any) -> None:
        self.reconnect_timeout = reconnect_timeout
        super().__init__(url, **kwargs)

    def claim_waiting(self, study_id: int) -> int | None:
        """Move a study's oldest WAITING trial to RUNNING and return its id; None if none.

        One short transaction: ``SELECT ... FOR UPDATE SKIP LOCKED`` then an ``UPDATE`` that
        also requires the state to be WAITING, so concurrent workers take different tickets
        without waiting on each other's row locks, and none is taken twice, on any database.
        This is :meth:`set_trial_state_values` (``RUNNING``) without first reading every
        WAITING trial, which costs each claim time in proportion to the tickets left. The
        same transaction writes a token to the trial's system attribute ``tether:claim``, so
        that after a lost reply the claim is known to be this call's or another worker's.
        """
        chosen: list[int] = []
        token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"

        def attempt() -> tuple[int | None]:
            chosen.clear()
            with _rdb_session(self) as session:
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
                        return (None,)
                    chosen.append(row[0])
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
                        return (row[0],)

        def committed() -> tuple[int | None] | None:
            if chosen:
                attrs = RDBStorage.get_trial_system_attrs(self, chosen[-1])
                if attrs.get(CLAIM_ATTR) == token:
                    return (chosen[-1],)
            return None

        return retry_transient(attempt, timeout=self.reconnect_timeout, recover=committed)[0]

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
            return RDBStorage._get_trials(
                self, study_id, states, included_trial_ids, trial_id_greater_than
            )
        with _rdb_session(self) as session:
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

    def set_trial_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        """:meth:`set_trial_user_attr` for several keys in one transaction (upserts; one
        statement for all of them on PostgreSQL)."""

        def attempt() -> None:
            with _rdb_session(self) as session:
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
                        index_elements=[
                            TrialUserAttributeModel.trial_id,
                            TrialUserAttributeModel.key,
                        ],
                        set_={"value_json": insert.excluded.value_json},
                    )
                )

        retry_transient(attempt, timeout=self.reconnect_timeout)

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        def committed() -> bool | None:
            trial = RDBStorage.get_trial(self, trial_id)
            if trial.state == state and (values is None or trial.values == list(values)):
                return True
            return None

        return retry_transient(
            lambda: RDBStorage.set_trial_state_values(self, trial_id, state, values),
            timeout=self.reconnect_timeout,
            recover=committed,
        )


def _rdb_session(storage: RDBStorage) -> Any:
    """An Optuna session (committed at the end, errors wrapped as Optuna wraps them)."""
    return _create_scoped_session(storage.scoped_session)


def _repeatable(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def retried(self: ResilientRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return retry_transient(
            lambda: method(self, *args, **kwargs), timeout=self.reconnect_timeout
        )

    return retried


for _name in _REPEATABLE:  # this class's own version where it has one
    setattr(ResilientRDBStorage, _name, _repeatable(getattr(ResilientRDBStorage, _name)))


class RetryStaleTrial(RetryHeartbeatStaleTrialCallback):
    """Optuna's re-enqueueing of a stale trial, made safe to repeat after a lost connection.

    Before it creates the retry it looks for one already made for this failure (a trial whose
    ``retry_history`` ends with the failed trial's number), so a lost reply never enqueues a
    ticket twice. The failed run's user attributes (recipe, curve, error) stay on it.
    """

    def __init__(self, *, max_retry: int | None, reconnect_timeout: float) -> None:
        super().__init__(max_retry=max_retry)
        self.reconnect_timeout = reconnect_timeout

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        # The retry starts clean: only tether's own markers (``tether:known_good``) carry
        # over, not the failed run's recipe, curve and error, which would outlive a success.
        template = copy.copy(trial)
        template.user_attrs = {
            k: v for k, v in trial.user_attrs.items() if k.startswith("tether:")
        }

        def retried() -> bool | None:
            for other in study.get_trials(deepcopy=False):
                if other.system_attrs.get("retry_history", [])[-1:] == [trial.number]:
                    return True
            return None

        def enqueue() -> bool:
            if not retried():
                RetryHeartbeatStaleTrialCallback.__call__(self, study, template)
            return True

        retry_transient(enqueue, timeout=self.reconnect_timeout, recover=retried)


# --- SQLite: one process ---------------------------------------------------------------------

_held: dict[str, int] = {}
_held_lock = threading.Lock()


def hold_single_process(storage: optuna.storages.BaseStorage) -> None:
    """Make this process the only one that searches a SQLite storage (others: no-op).

    An exclusive ``flock`` on ``<file>.tether-lock`` is taken and kept until the process
    exits, when the file is removed; calling again in the same process does nothing.

    Raises:
        ConfigError: (kind ``storage``) another process holds the file; the message says what
            to use instead.
    """
    storage = getattr(storage, "_backend", storage)  # optuna.load_study wraps it in a cache
    if not isinstance(storage, RDBStorage) or storage.engine.dialect.name != "sqlite":
        return
    database = storage.engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = os.path.abspath(database) + ".tether-lock"
    with _held_lock:
        if path in _held:
            return
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                journal = Path(database).with_suffix(".journal")
                raise ConfigError(
                    f"{mask_url(storage.url)} is for one process, and process {owner} is "
                    f"searching it; for several workers on one machine use journal:{journal}, "
                    "for several machines postgresql+psycopg://user@host/db",
                    kind="storage",
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a file its last holder removed while we opened it
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _held[path] = fd


@atexit.register
def _release_held() -> None:
    with _held_lock:
        for path, fd in _held.items():
            with contextlib.suppress(OSError):
                os.unlink(path)
            os.close(fd)
        _held.clear()
