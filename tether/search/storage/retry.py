"""Lost database connections: which errors they are, and retrying through them.

A statement in flight when the server drops the connection (a restart, a network cut, an
administrator's ``pg_terminate_backend``) fails; so does a new connection while the server is
still away. :func:`retry_transient` repeats an operation through such failures with a bounded
backoff, for up to a timeout, so a worker waits out a server restart and goes on.
"""

from __future__ import annotations

from collections.abc import Callable
import logging
import random
import time
from typing import TypeVar

from optuna.exceptions import StorageInternalError
import sqlalchemy.exc

from tether.search.storage.urls import mask_url


T = TypeVar("T")
_log = logging.getLogger(__name__)


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


def is_storage_error(error: BaseException) -> bool:
    """Whether ``error`` came from the storage (SQLAlchemy, the driver, Optuna's wrapper)."""
    return isinstance(error, sqlalchemy.exc.SQLAlchemyError | StorageInternalError)


def describe_error(error: BaseException) -> str:
    """The first line of a storage error (the driver's own message), passwords masked."""
    original = getattr(error, "orig", None) or error
    text = str(original).strip().splitlines()
    return mask_url(text[0] if text else type(original).__name__)


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
                    describe_error(error.__cause__ or error),
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
