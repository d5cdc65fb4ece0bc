"""Storage URLs -> Optuna storages, plain Optuna so optuna-dashboard and its CLI read them.

========================================  ===============================================
``sqlite:///tether.db`` (default)          one process on one machine (its slots are threads)
``journal:./tether.journal``              several processes on one machine, no server;
                                          heartbeats (Tether's own)
``postgresql+psycopg://user@host/db``      many workers on many machines; heartbeats
========================================  ===============================================

``postgresql://`` is read as ``postgresql+psycopg://`` (psycopg 3; SQLAlchemy 2.1's default
driver). On both shared storages a trial whose worker died is failed after the grace period
and enqueued again (:mod:`~tether.search.storage.heartbeat`).

**Connections.** Each process opens one engine with a bounded pool: at most
``pool_size + max_overflow`` connections (2 + 0 by default), whatever its number of slots and
heartbeat threads, which share them (a session lasts one statement or one short transaction).
``N`` worker processes thus hold at most ``2 N`` connections (plus one per ``tether status``,
``reap`` or dashboard): size PostgreSQL's ``max_connections`` (100 by default) for it. They
show in ``pg_stat_activity`` with ``application_name = 'tether'``. ``pool_pre_ping`` replaces
a connection the server dropped before it is used. Opening a storage retries a connection
dropped midway, never a refused one: a wrong port, user or database is bad input and fails
at once. Processes that open a new database at the same moment race to create Optuna's tables;
the losers open it again and find them.
"""

from __future__ import annotations

import os
from typing import Any
import warnings

import optuna
from optuna.storages import RDBStorage
import sqlalchemy
import sqlalchemy.exc

from tether.errors import ConfigError
from tether.search.storage._optuna import backend_of
from tether.search.storage.callbacks import RetryStaleTrial
from tether.search.storage.heartbeat import HeartbeatJournalStorage
from tether.search.storage.options import StorageOptions
from tether.search.storage.rdb import ResilientRDBStorage
from tether.search.storage.retry import describe_error
from tether.search.storage.retry import is_lost_connection
from tether.search.storage.retry import retry_transient
from tether.search.storage.urls import mask_url


def open_storage(
    url: str, *, options: StorageOptions | None = None, create: bool = True
) -> optuna.storages.BaseStorage:
    """Open (creating if needed) the Optuna storage behind ``url``.

    With ``create=False`` (every verb but ``tether run``) a SQLite or journal file that does
    not exist is an error rather than a new, empty storage: a typo must not create files.

    A server URL gives a :class:`~tether.search.storage.rdb.ResilientRDBStorage` with a
    bounded pool, a SQLite URL a plain :class:`~optuna.storages.RDBStorage`, ``journal:PATH``
    a :class:`~tether.search.storage.heartbeat.HeartbeatJournalStorage`.

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
        return HeartbeatJournalStorage(
            path,
            heartbeat_interval=options.heartbeat_interval,
            grace_period=options.grace_period,
            max_retry=options.max_retry,
        )
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if not scheme.startswith(("sqlite", "postgresql", "mysql")):
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
            # heartbeats are "experimental" since Optuna 2.8.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if scheme.startswith("sqlite"):
                return RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
            return retry_transient(
                lambda: _server(url, scheme, options),
                timeout=options.reconnect_timeout,
                transient=lambda error: is_lost_connection(error) or _schema_race(error),
            )
    except ImportError as error:
        raise ConfigError(
            f"storage {mask_url(url)}: driver missing ({error.name}); "
            "install tether[postgres] for PostgreSQL",
            kind="storage",
        ) from None
    except Exception as error:  # SQLAlchemy's OperationalError and friends: one line, masked
        raise ConfigError(
            f"cannot open storage {mask_url(url)}: {describe_error(error)}", kind="storage"
        ) from None


def _schema_race(error: BaseException) -> bool:
    """Whether opening failed because another process created Optuna's tables at the same
    moment (workers started at once on a new database): opening again finds them there."""
    text = str(getattr(error, "orig", error))
    return isinstance(error, sqlalchemy.exc.DBAPIError) and (
        "already exists" in text or "duplicate key value" in text
    )


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


def study_names(storage: optuna.storages.BaseStorage) -> set[str]:
    """The names of the studies a storage holds."""
    return {
        s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
    }


def storage_url(storage: optuna.storages.BaseStorage) -> str:
    """The URL of an open storage, as messages show it (password masked)."""
    backend = backend_of(storage)
    if isinstance(backend, RDBStorage):
        return mask_url(backend.url)
    if isinstance(backend, HeartbeatJournalStorage):
        return f"journal:{backend.path}"
    return type(backend).__name__
