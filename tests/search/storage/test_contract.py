"""Optuna's own storage contract (``optuna.testing.pytest_storages.StorageTestCase``), run
unchanged against Tether's storages: every override is held to Optuna's semantics.

- :class:`~tether.search.storage.ResilientRDBStorage` on SQLite and on PostgreSQL (its claim,
  attribute upserts, retries and cache-friendly trial reads sit under the same API);
- :class:`~tether.search.storage.HeartbeatJournalStorage` on a journal file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
import uuid

from optuna.storages import BaseStorage
from optuna.testing.pytest_storages import StorageTestCase
import pytest

from tests.search.conftest import drop_database
from tests.search.conftest import new_database
from tests.search.conftest import pg_connect
from tether.search.storage import HeartbeatJournalStorage
from tether.search.storage import ResilientRDBStorage


class TestResilientRDBStorageOnSQLite(StorageTestCase):
    @pytest.fixture
    def storage(self, tmp_path: Path) -> BaseStorage:
        return ResilientRDBStorage(f"sqlite:///{tmp_path / 'contract.db'}", reconnect_timeout=5)


@pytest.fixture(scope="module")
def contract_database(postgres_url: str) -> Iterator[str]:
    """One database for the PostgreSQL contract tests, its schema created once."""
    url = new_database(postgres_url, f"tether_contract_{uuid.uuid4().hex[:8]}")
    ResilientRDBStorage(url).engine.dispose()
    try:
        yield url
    finally:
        drop_database(postgres_url, url)


class TestResilientRDBStorageOnPostgreSQL(StorageTestCase):
    @pytest.fixture
    def storage(self, contract_database: str) -> Iterator[BaseStorage]:
        with pg_connect(contract_database) as connection:  # each test starts with no study
            connection.execute("TRUNCATE studies RESTART IDENTITY CASCADE")
        storage = ResilientRDBStorage(contract_database, reconnect_timeout=5)
        yield storage
        storage.engine.dispose()


class TestHeartbeatJournalStorage(StorageTestCase):
    @pytest.fixture
    def storage(self, tmp_path: Path) -> BaseStorage:
        return HeartbeatJournalStorage(
            str(tmp_path / "contract.journal"),
            heartbeat_interval=30,
            grace_period=120,
            max_retry=2,
        )
