"""Optuna storages for many workers: URLs, retries, heartbeats, locks, Optuna's insides.

- :mod:`~.urls`: which URL a command uses, shown with its password masked (no Optuna import);
- :mod:`~.connect`: a URL -> an Optuna storage, with the table of storage tiers;
- :mod:`~.options`: heartbeat, retry and connection settings (``$TETHER_*``);
- :mod:`~.retry`: lost connections, and retrying through them;
- :mod:`~.rdb`: the RDB storage that survives lost connections and claims in one step;
- :mod:`~.callbacks`: a dead worker's trial enqueued again, exactly once;
- :mod:`~.heartbeat`: heartbeats while a trial runs (PostgreSQL, and journal files);
- :mod:`~.lock`: SQLite's one process, and one creator of a spec's studies at a time;
- :mod:`~._optuna`: every use of Optuna's private API, so an upgrade touches one file.

The storages stay plain Optuna: optuna-dashboard and the ``optuna`` CLI read them as they are.
"""

from tether.search.storage._optuna import backend_of
from tether.search.storage._optuna import frozen_of
from tether.search.storage._optuna import show_in_cache
from tether.search.storage._optuna import storage_of
from tether.search.storage._optuna import study_id_of
from tether.search.storage._optuna import trial_id_of
from tether.search.storage.callbacks import RetryStaleTrial
from tether.search.storage.connect import open_storage
from tether.search.storage.connect import storage_url
from tether.search.storage.connect import study_names
from tether.search.storage.heartbeat import Heartbeat
from tether.search.storage.heartbeat import HeartbeatJournalStorage
from tether.search.storage.heartbeat import heartbeat_timing
from tether.search.storage.heartbeat import reap
from tether.search.storage.lock import creation_lock
from tether.search.storage.lock import hold_single_process
from tether.search.storage.options import StorageOptions
from tether.search.storage.rdb import ResilientRDBStorage
from tether.search.storage.retry import describe_error
from tether.search.storage.retry import is_lost_connection
from tether.search.storage.retry import is_storage_error
from tether.search.storage.retry import is_transient
from tether.search.storage.retry import retry_transient
from tether.search.storage.urls import DEFAULT_URL
from tether.search.storage.urls import ENV_VAR
from tether.search.storage.urls import mask_url
from tether.search.storage.urls import resolve_url


__all__ = [
    "DEFAULT_URL",
    "ENV_VAR",
    "Heartbeat",
    "HeartbeatJournalStorage",
    "ResilientRDBStorage",
    "RetryStaleTrial",
    "StorageOptions",
    "backend_of",
    "creation_lock",
    "describe_error",
    "frozen_of",
    "heartbeat_timing",
    "hold_single_process",
    "is_lost_connection",
    "is_storage_error",
    "is_transient",
    "mask_url",
    "open_storage",
    "reap",
    "resolve_url",
    "retry_transient",
    "show_in_cache",
    "storage_of",
    "storage_url",
    "study_id_of",
    "study_names",
    "trial_id_of",
]
