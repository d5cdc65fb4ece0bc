"""Storage URLs -> Optuna storages, plain Optuna so optuna-dashboard and the CLI read them as is.

========================================  ===============================================
``sqlite:///tether.db`` (default)          one process on one machine
``journal:./tether.journal``              several processes on one machine, no server
``postgresql+psycopg://user@host/db``      many workers on many machines; heartbeats, and
                                          trials of dead workers are failed and retried
========================================  ===============================================

``postgresql://`` is read as ``postgresql+psycopg://`` (psycopg 3; SQLAlchemy 2.1's default
driver). Passwords never leave this module unmasked: :func:`mask_url` is what every message,
log line and stored attribute shows.
"""

from __future__ import annotations

from dataclasses import dataclass
import os
import re
import warnings

import optuna
from optuna.storages import JournalStorage
from optuna.storages import RDBStorage
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend

from finetune.errors import ConfigError


DEFAULT_URL = "sqlite:///tether.db"
ENV_VAR = "TETHER_STORAGE"


@dataclass(frozen=True)
class StorageOptions:
    """How trials of dead workers are detected and retried (RDB storages only).

    A worker records a heartbeat every ``heartbeat_interval`` seconds while a trial runs; a
    RUNNING trial silent for ``grace_period`` seconds is failed by the next worker (or by
    ``tether reap``) and re-enqueued up to ``max_retry`` times. The grace period is generous
    because a busy GPU host can stall the heartbeat thread (Optuna #3198).
    """

    heartbeat_interval: int = 30
    grace_period: int = 120
    max_retry: int = 2
    pool_size: int = 2

    @classmethod
    def from_env(cls) -> StorageOptions:
        """Defaults, overridden by ``$TETHER_HEARTBEAT_INTERVAL`` and ``$TETHER_GRACE_PERIOD``."""
        defaults = cls()
        try:
            return cls(
                heartbeat_interval=int(
                    os.environ.get("TETHER_HEARTBEAT_INTERVAL", defaults.heartbeat_interval)
                ),
                grace_period=int(os.environ.get("TETHER_GRACE_PERIOD", defaults.grace_period)),
            )
        except ValueError as error:
            raise ConfigError(
                f"TETHER_HEARTBEAT_INTERVAL / TETHER_GRACE_PERIOD: {error}"
            ) from None


_PASSWORD = re.compile(r"(?P<head>[a-z0-9+.-]+://[^:/@]+:)(?P<password>[^@]*)(?P<tail>@)", re.I)


def mask_url(url: str) -> str:
    """``postgresql+psycopg://tether:secret@db/x`` -> ``postgresql+psycopg://tether:***@db/x``."""
    return _PASSWORD.sub(r"\g<head>***\g<tail>", url)


def resolve_url(url: str | None) -> str:
    """The storage URL: the argument, else ``$TETHER_STORAGE``, else ``sqlite:///tether.db``."""
    return url or os.environ.get(ENV_VAR) or DEFAULT_URL


def open_storage(
    url: str, *, options: StorageOptions | None = None
) -> optuna.storages.BaseStorage:
    """Open (creating if needed) the Optuna storage behind ``url``.

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
    server = not scheme.startswith("sqlite")
    engine_kwargs: dict[str, object] = {"pool_pre_ping": True}
    if server:
        engine_kwargs.update(pool_size=options.pool_size, max_overflow=0, pool_recycle=1800)
    try:
        with warnings.catch_warnings():
            # heartbeats and their retry callback are "experimental" since Optuna 2.8/2.9.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return _rdb(url, engine_kwargs, options, server=server)
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


def _rdb(
    url: str, engine_kwargs: dict[str, object], options: StorageOptions, *, server: bool
) -> RDBStorage:
    return RDBStorage(
        url,
        engine_kwargs=engine_kwargs,
        heartbeat_interval=options.heartbeat_interval if server else None,
        grace_period=options.grace_period if server else None,
        heartbeat_stale_trial_callback=(
            RetryHeartbeatStaleTrialCallback(max_retry=options.max_retry) if server else None
        ),
    )


def _reason(error: BaseException) -> str:
    original = getattr(error, "orig", None) or error
    text = str(original).strip().splitlines()
    return mask_url(text[0] if text else type(original).__name__)


def study_names(storage: optuna.storages.BaseStorage) -> set[str]:
    """The names of the studies a storage holds."""
    return {
        s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
    }
