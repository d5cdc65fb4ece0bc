"""``tether status --format table|json|yaml``: the same records, each read back matches what
the storage holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
import pytest
import yaml

from tests.conftest import ROOT
from tests.search.results.conftest import THREE_METHODS
from tests.search.results.conftest import add_study
from tether.cli import main
from tether.search.spec import load_specs
from tether.search.storage import open_storage
from tether.testing.specs import tiny_digits_spec
from tether.testing.specs import write_spec


def _trial(state: TrialState, value: float | None = None) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(
        state=state,
        value=value,
        params={"radius": 0.3},
        distributions={"radius": FloatDistribution(0.0, 1.0)},
    )


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A spec of three methods, two conditions, and a storage where only standard and
    MARS-PGM were created: MARS-PGM with trials in every state: the paths."""
    folder = tmp_path_factory.mktemp("status")
    recipe = str(ROOT / "configs" / "digits.yaml")
    data = tiny_digits_spec(
        "s", recipe=recipe, methods=THREE_METHODS, conditions={"clean_0": {}, "clean_1": {}}
    )
    spec_path = write_spec(folder, data)
    url = f"sqlite:///{folder / 'tether.db'}"
    storage = open_storage(url)
    for spec in load_specs(str(spec_path)):
        add_study(storage, spec, "standard", values=[0.4])
        study = add_study(storage, spec, "mars-pgm", values=[0.5, 0.7, 0.6])
        for state in (TrialState.PRUNED, TrialState.FAIL, TrialState.FAIL, TrialState.WAITING):
            study.add_trial(_trial(state))
    return str(spec_path), url


def _status(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 0
    return capsys.readouterr().out


def test_json_matches_the_storage(
    searched: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    spec, url = searched
    records = json.loads(_status(["status", spec, "--storage", url, "--format", "json"], capsys))
    storage = open_storage(url, create=False)
    assert [r["study"] for r in records] == [
        f"s.{c}/{m}" for c in ("clean_0", "clean_1") for m in THREE_METHODS
    ]
    for record in records:
        assert record["spec"] == "s"
        assert record["study"] == f"s.{record['condition']}/{record['method']}"
        if record["method"] == "l2-sp":
            assert not record["created"]
            assert set(record["trials"].values()) == {0}
            assert record["best_trial"] is None
            continue
        study = optuna.load_study(study_name=record["study"], storage=storage)
        trials = study.get_trials(deepcopy=False)
        assert record["created"]
        assert record["trials"] == {
            state.name.lower(): sum(t.state == state for t in trials)
            for state in (
                TrialState.COMPLETE,
                TrialState.PRUNED,
                TrialState.FAIL,
                TrialState.RUNNING,
                TrialState.WAITING,
            )
        }
        assert (record["best_trial"], record["best_value"]) == (
            study.best_trial.number,
            study.best_value,
        )
        assert record["best_params"] == study.best_trial.params
    mars = records[1]
    assert mars["trials"] == {"complete": 3, "pruned": 1, "fail": 2, "running": 0, "waiting": 1}
    assert (mars["best_trial"], mars["best_value"]) == (1, 0.7)


def test_yaml_holds_the_same_records_as_json(
    searched: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    spec, url = searched
    argv = ["status", spec, "--storage", url, "--format"]
    as_yaml: Any = yaml.safe_load(_status([*argv, "yaml"], capsys))
    assert as_yaml == json.loads(_status([*argv, "json"], capsys))


def test_the_table_is_the_default(
    searched: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    spec, url = searched
    argv = ["status", spec, "--storage", url, "--conditions", "clean_1"]
    table = _status(argv, capsys)
    assert table == _status([*argv, "--format", "table"], capsys)
    lines = table.splitlines()
    assert lines[0].split() == [
        "study",
        "complete",
        "pruned",
        "fail",
        "running",
        "waiting",
        "best",
        "val",
    ]
    assert lines[2].split() == ["s.clean_1/mars-pgm", "3", "1", "2", "0", "1", "70.0%"]
    assert lines[3].split() == ["s.clean_1/l2-sp", "(not", "created)"]


def test_a_bad_format_exits_2_with_one_line(
    searched: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    spec, url = searched
    with pytest.raises(SystemExit) as exited:
        main(["status", spec, "--storage", url, "--format", "xml"])
    assert exited.value.code == 2
    said = capsys.readouterr()
    assert said.out == ""
    assert said.err.count("\n") == 1
    assert "argument --format: invalid choice: 'xml'" in said.err


def test_a_missing_spec_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.yaml"
    assert main(["status", str(missing), "--format", "json"]) == 2
    said = capsys.readouterr()
    assert said.out == ""
    assert said.err == f"tether: error: study spec {missing} does not exist\n"
