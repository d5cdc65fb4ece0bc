"""The settings of a server storage: heartbeats, retries, connections."""

from __future__ import annotations

from dataclasses import dataclass
import os

from tether.errors import ConfigError


APPLICATION_NAME = "tether"


@dataclass(frozen=True)
class StorageOptions:
    """Heartbeats, retries and connections of a storage shared by several processes.

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
