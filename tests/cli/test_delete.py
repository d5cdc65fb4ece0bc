"""``tether delete``: a spec's studies go, all or those picked; it asks first unless --yes."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tether.cli import main
from tether.search.execution.studies import create_studies
from tether.search.spec import load_specs
from tether.search.storage import open_storage
from tether.search.storage import study_names


NOISE = str(ROOT / "studies" / "digits-noise.yaml")


@pytest.fixture
def url(tmp_path: Path) -> str:
    """A SQLite file with every study of the digits-noise spec (4 conditions x 3 methods)."""
    url = f"sqlite:///{tmp_path / 'tether.db'}"
    storage = open_storage(url)
    for spec in load_specs(NOISE):
        create_studies(spec, storage, groups=[])
    return url


def _names(url: str) -> set[str]:
    return study_names(open_storage(url, create=False))


def test_delete_with_yes_removes_only_the_picked_studies(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _names(url)
    argv = ["delete", NOISE, "--conditions", "noise20", "--methods", "rsl", "--yes"]
    assert main([*argv, "--storage", url]) == 0
    assert before - _names(url) == {"digits-noise.noise20/rsl"}
    assert capsys.readouterr().out == "deleted digits-noise.noise20/rsl\n"


def test_delete_every_condition_of_a_spec(url: str) -> None:
    assert main(["delete", NOISE, "--yes", "--storage", url]) == 0
    assert _names(url) == set()


def test_delete_asks_and_a_no_keeps_everything(
    url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _names(url)
    monkeypatch.setattr("sys.stdin", _Terminal("n\n"))
    assert main(["delete", NOISE, "--methods", "standard", "--storage", url]) == 0
    assert _names(url) == before
    err = capsys.readouterr().err
    assert "digits-noise.noise40/standard (8 trials)" in err
    assert "delete these 4 studies from" in err
    assert "nothing deleted" in err


def test_delete_asks_and_a_yes_deletes(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", _Terminal("y\n"))
    assert main(["delete", NOISE, "--methods", "standard", "--storage", url]) == 0
    assert not any(name.endswith("/standard") for name in _names(url))


def test_without_a_terminal_and_without_yes_nothing_is_deleted(
    url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _names(url)
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))  # a pipe, not a person
    assert main(["delete", NOISE, "--storage", url]) == 2
    assert _names(url) == before
    assert "add --yes" in capsys.readouterr().err.splitlines()[-1]


def test_a_spec_with_no_study_in_the_storage_is_refused(tmp_path: Path) -> None:
    other = f"sqlite:///{tmp_path / 'empty.db'}"
    open_storage(other)
    assert main(["delete", NOISE, "--yes", "--storage", other]) == 2


class _Terminal(io.StringIO):
    """Standard input that says it is a terminal."""

    def isatty(self) -> bool:
        return True
