"""Locks on a storage: SQLite's one process, and one creator of a spec's studies at a time.

``hold_single_process``: SQLite serialises writers through a file lock, and Optuna does not
recommend it for parallel optimisation; so the process that searches a SQLite file holds it
and a second one is refused with exit code 2 and the URL to use instead. Several slots inside
one process share the file through threads and are fine.

``creation_lock``: two ``tether run --create-only`` started at once on a new spec must enqueue
its budget once. Creation (check, create, enqueue) runs under a lock that the storage's own
machinery keeps: a PostgreSQL advisory lock (released when its connection goes, so a creator
that dies frees it), or an ``flock`` on a file next to a SQLite or journal file (released
when the process goes). The second creator waits, then finds the budget enqueued.
"""

from __future__ import annotations

import atexit
from collections.abc import Iterator
import contextlib
import fcntl
import hashlib
import os
from pathlib import Path
import threading

import optuna
from optuna.storages import RDBStorage
import sqlalchemy

from tether.errors import ConfigError
from tether.search.storage._optuna import backend_of
from tether.search.storage.heartbeat import HeartbeatJournalStorage
from tether.search.storage.urls import mask_url


_held: dict[str, int] = {}
_held_lock = threading.Lock()


def _sqlite_file(storage: optuna.storages.BaseStorage) -> str | None:
    """The database file of a SQLite storage, else None (also for an in-memory one)."""
    storage = backend_of(storage)
    if not isinstance(storage, RDBStorage) or storage.engine.dialect.name != "sqlite":
        return None
    database = storage.engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return os.path.abspath(database)


def _url(storage: optuna.storages.BaseStorage) -> str:
    backend = backend_of(storage)
    return backend.url if isinstance(backend, RDBStorage) else repr(backend)


def hold_single_process(storage: optuna.storages.BaseStorage) -> None:
    """Make this process the only one that searches a SQLite storage (others: no-op).

    An exclusive ``flock`` on ``<file>.tether-lock`` is taken and kept until the process
    exits, when the file is removed; calling again in the same process does nothing.

    Raises:
        ConfigError: (kind ``storage``) another process holds the file; the message says what
            to use instead.
    """
    database = _sqlite_file(storage)
    if database is None:
        return
    path = database + ".tether-lock"
    with _held_lock:
        if path in _held:
            return
        try:
            _held[path] = _lock_file(path, wait=False)
        except BlockingIOError as busy:
            journal = Path(database).with_suffix(".journal")
            raise ConfigError(
                f"{mask_url(_url(storage))} is for one process, and process {busy.args[0]} is "
                f"searching it; for several workers on one machine use journal:{journal}, "
                "for several machines postgresql+psycopg://user@host/db",
                kind="storage",
            ) from None


@atexit.register
def _release_held() -> None:
    with _held_lock:
        for path, fd in _held.items():
            _unlock_file(path, fd)
        _held.clear()


def _lock_file(path: str, *, wait: bool) -> int:
    """Take an exclusive ``flock`` on the lock file ``path`` (created if needed), write this
    process's id in it and return its descriptor.

    A holder removes its lock file when it lets go (:func:`_unlock_file`), so a file opened
    just before it was removed is not the lock any more: the inode is checked, and the file
    opened again if it changed.

    Raises:
        BlockingIOError: (``wait=False``) another process holds it; ``args[0]`` is its id.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise BlockingIOError(owner) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _unlock_file(path: str, fd: int) -> None:
    """Remove the lock file ``path``, then let go of it (closing releases the ``flock``)."""
    with contextlib.suppress(OSError):
        os.unlink(path)
    os.close(fd)


@contextlib.contextmanager
def creation_lock(storage: optuna.storages.BaseStorage, name: str) -> Iterator[None]:
    """Hold the lock that serialises creating the studies of the spec ``name`` in ``storage``.

    Blocks while another process holds it. PostgreSQL: an advisory lock on a key derived
    from ``name``; a SQLite or journal file: an ``flock`` on ``<file>.tether-create-lock``,
    removed when released. Other storages (in-memory, MySQL) run unlocked.
    """
    backend = backend_of(storage)
    file = _sqlite_file(backend) or (
        backend.path if isinstance(backend, HeartbeatJournalStorage) else None
    )
    if file is not None:
        path = os.path.abspath(file) + ".tether-create-lock"
        fd = _lock_file(path, wait=True)
        try:
            yield
        finally:
            _unlock_file(path, fd)
        return
    if isinstance(backend, RDBStorage) and backend.engine.dialect.name == "postgresql":
        digest = hashlib.sha256(f"tether:create:{name}".encode()).digest()
        key = {"key": int.from_bytes(digest[:8], "big", signed=True)}
        with backend.engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), key)
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), key)
        return
    yield
