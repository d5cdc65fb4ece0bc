"""Storage URLs: masking, the supported kinds, and one-line errors for bad ones."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from tether.errors import ConfigError
from tether.search.storage import mask_url
from tether.search.storage import open_storage
from tether.search.storage import resolve_url


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (
            "postgresql+psycopg://tether:s3cret@db:5432/x",
            "postgresql+psycopg://tether:***@db:5432/x",
        ),
        ("postgresql://u:p%40ss@h/db", "postgresql://u:***@h/db"),
        ("postgresql+psycopg://root@127.0.0.1/test", "postgresql+psycopg://root@127.0.0.1/test"),
        ("sqlite:///tether.db", "sqlite:///tether.db"),
    ],
)
def test_passwords_are_masked(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_resolve_url_prefers_argument_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TETHER_STORAGE", raising=False)
    assert resolve_url(None) == "sqlite:///tether.db"
    monkeypatch.setenv("TETHER_STORAGE", "journal:x.journal")
    assert resolve_url(None) == "journal:x.journal"
    assert resolve_url("sqlite:///a.db") == "sqlite:///a.db"


def test_sqlite_and_journal_storages_work(tmp_path: Path) -> None:
    for url in (f"sqlite:///{tmp_path}/t.db", f"journal:{tmp_path}/t.journal"):
        storage = open_storage(url)
        study = optuna.create_study(storage=storage, study_name="s")
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
        assert len(optuna.load_study(study_name="s", storage=open_storage(url)).trials) == 2


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("mongodb://x", "not a storage URL"),
        ("sqlite:////nonexistent/dir/t.db", "unable to open database file"),
        ("postgresql+psycopg://root:hunter2@127.0.0.1:1/test", "refused"),
        ("journal:", "needs a file"),
    ],
)
def test_bad_storages_are_one_line_config_errors(url: str, words: str) -> None:
    with pytest.raises(ConfigError) as error:
        open_storage(url)
    assert error.value.kind == "storage"
    assert words in str(error.value)
    assert "\n" not in str(error.value)
    assert "hunter2" not in str(error.value)


def test_wrong_postgres_role_is_reported_masked(postgres_url: str) -> None:
    host = postgres_url.split("@", 1)[1]
    with pytest.raises(ConfigError) as error:
        open_storage(f"postgresql+psycopg://nobody:topsecret@{host}")
    assert "nobody:***@" in str(error.value)
    assert "topsecret" not in str(error.value)
