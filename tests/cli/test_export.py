"""``tether export``: one row per trial of every study of the spec, read back with pandas as
the storage holds it; bad input is one line and exit code 2, and nothing is written."""

from __future__ import annotations

import io
from pathlib import Path
import sys
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
import pandas as pd
import pytest

from tests.conftest import ROOT
from tether.cli import main
from tether.search.spec import load_specs
from tether.search.storage import open_storage
from tether.testing.specs import TWO_METHODS
from tether.testing.specs import tiny_digits_spec
from tether.testing.specs import write_spec


DISTRIBUTIONS: dict[str, BaseDistribution] = {
    "radius": FloatDistribution(0.05, 1.0),
    "head_radius": FloatDistribution(1.0, 10.0),
}


def _trial(number: int, state: TrialState, method: str) -> optuna.trial.FrozenTrial:
    """Trial ``number`` of ``method`` as a worker leaves it: complete ones with distances,
    a test accuracy and (the first) learned radii, a failed one with its error."""
    searched = method == "mars-pgm"
    attrs: dict[str, Any] = {
        "seconds": 10.0 + number,
        "device": f"cuda:{number}",
        "curve": [{"epoch": 1, "val_accuracy": 0.5}],
        "recipe": {"train": {"lr": 0.001}},
    }
    if state == TrialState.COMPLETE:
        attrs["distances"] = {"block1": 0.1 * (number + 1), "head": 2.0}
        attrs["test_accuracy"] = 0.6 + number / 100
    if state == TrialState.COMPLETE and number == 0:
        attrs["learned_radii"] = {"absolute": {"block1": 0.25}, "relative": {"block1": 0.5}}
    if state == TrialState.FAIL:
        attrs["error"] = {"kind": "oom", "message": "out of memory", "log": ["a", "b"]}
    return optuna.trial.create_trial(
        state=state,
        value=0.5 + number / 10 if state == TrialState.COMPLETE else None,
        params={"radius": 0.1 * (number + 1), "head_radius": 3.0} if searched else {},
        distributions=DISTRIBUTIONS if searched else {},
        user_attrs=attrs,
    )


STATES = {
    "standard": [TrialState.COMPLETE],
    "mars-pgm": [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE, TrialState.FAIL],
}


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A spec of standard and MARS-PGM under two conditions, each searched (trials in
    :data:`STATES`): the spec's path and the storage's URL."""
    folder = tmp_path_factory.mktemp("export")
    recipe = str(ROOT / "configs" / "digits.yaml")
    data = tiny_digits_spec("e", recipe=recipe, conditions={"clean_0": {}, "clean_1": {}})
    spec_path = write_spec(folder, data)
    url = f"sqlite:///{folder / 'tether.db'}"
    storage = open_storage(url)
    for spec in load_specs(str(spec_path)):
        for method in TWO_METHODS:
            study = optuna.create_study(
                study_name=spec.study_name(method), storage=storage, direction="maximize"
            )
            for number, state in enumerate(STATES[method]):
                study.add_trial(_trial(number, state, method))
    return str(spec_path), url


def _same(cell: Any, value: float | None) -> bool:
    """A cell holds ``value``: missing (NaN) for None."""
    return bool(pd.isna(cell)) if value is None else cell == pytest.approx(value)


def _check_rows(frame: pd.DataFrame, url: str) -> None:
    """Each row of ``frame`` is its trial in the storage at ``url``, and every trial has one."""
    storage = open_storage(url, create=False)
    assert len(frame) == 2 * sum(len(states) for states in STATES.values())
    assert list(frame.columns[:10]) == [
        "study",
        "spec",
        "condition",
        "repeat",
        "method",
        "number",
        "value",
        "datetime_start",
        "datetime_complete",
        "duration",
    ]
    assert frame.columns[-1] == "state"
    assert {"user_attrs_recipe", "user_attrs_curve", "user_attrs_error_log"}.isdisjoint(
        frame.columns
    )
    for row in frame.itertuples(index=False):
        study = optuna.load_study(study_name=row.study, storage=storage)
        trial = study.trials[row.number]
        assert row.study == f"e.{row.condition}/{row.method}"
        assert (row.spec, row.repeat) == ("e", 0)
        assert row.state == trial.state.name
        assert _same(row.value, trial.value)
        assert row.user_attrs_seconds == trial.user_attrs["seconds"]
        assert row.user_attrs_device == trial.user_attrs["device"]
        assert pd.Timestamp(row.datetime_start) == pd.Timestamp(trial.datetime_start)
        if row.method == "mars-pgm":
            assert row.params_radius == pytest.approx(trial.params["radius"])
            assert row.params_head_radius == trial.params["head_radius"]
        else:
            assert pd.isna(row.params_radius)
        distances = trial.user_attrs.get("distances", {})
        assert _same(row.user_attrs_distances_block1, distances.get("block1"))
        assert _same(row.user_attrs_test_accuracy, trial.user_attrs.get("test_accuracy"))
    first = frame[(frame.number == 0) & (frame.method == "mars-pgm")]
    assert list(first.user_attrs_learned_radii_absolute_block1) == [0.25, 0.25]
    assert list(first.user_attrs_learned_radii_relative_block1) == [0.5, 0.5]
    failed = frame[frame.state == "FAIL"]
    assert list(failed.user_attrs_error_kind) == ["oom", "oom"]


def test_csv_has_one_row_per_trial_as_the_storage_holds_it(
    searched: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, url = searched
    target = tmp_path / "out" / "trials.csv"
    assert main(["export", spec, "--storage", url, "-o", str(target)]) == 0
    said = capsys.readouterr()
    assert said.out == f"{target}\n"
    assert "exported 10 trials of 4 studies" in said.err
    _check_rows(pd.read_csv(target), url)


def test_parquet_has_one_row_per_trial_with_its_types(
    searched: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, url = searched
    target = tmp_path / "trials.parquet"
    assert main(["export", spec, "--storage", url, "--output", str(target)]) == 0
    frame = pd.read_parquet(target)
    _check_rows(frame, url)
    assert pd.api.types.is_datetime64_any_dtype(frame.datetime_start)
    assert pd.api.types.is_timedelta64_dtype(frame.duration)


def test_dash_writes_csv_on_stdout_for_the_methods_asked(
    searched: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    spec, url = searched
    argv = ["-q", "export", spec, "--storage", url, "-o", "-", "--methods", "standard"]
    assert main(argv) == 0
    said = capsys.readouterr()
    assert said.err == ""
    frame = pd.read_csv(io.StringIO(said.out))
    assert list(frame.study) == ["e.clean_0/standard", "e.clean_1/standard"]
    assert "params_radius" not in frame.columns


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``argv``, which must exit 2 printing nothing on stdout: its one line on stderr."""
    assert main(argv) == 2
    said = capsys.readouterr()
    assert said.out == ""
    assert said.err.count("\n") == 1
    assert said.err.startswith("tether: error: ")
    return said.err


def test_an_unknown_suffix_exits_2_with_one_line(
    searched: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, url = searched
    target = tmp_path / "trials.xlsx"
    err = _fails(["export", spec, "--storage", url, "-o", str(target)], capsys)
    assert "trials.xlsx: its suffix must be .csv or .parquet" in err
    assert not target.exists()


def test_a_missing_spec_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.yaml"
    err = _fails(["export", str(missing), "-o", str(tmp_path / "t.csv")], capsys)
    assert err == f"tether: error: study spec {missing} does not exist\n"
    assert not (tmp_path / "t.csv").exists()


def test_a_missing_storage_exits_2_with_one_line(
    searched: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, _ = searched
    url = f"sqlite:///{tmp_path / 'none.db'}"
    err = _fails(["export", spec, "--storage", url, "-o", str(tmp_path / "t.csv")], capsys)
    assert "none.db" in err
    assert not (tmp_path / "t.csv").exists()


@pytest.mark.parametrize(("package", "suffix"), [("pandas", "csv"), ("pyarrow", "parquet")])
def test_without_the_export_extra_it_says_what_to_install(
    package: str,
    suffix: str,
    searched: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec, url = searched
    monkeypatch.setitem(sys.modules, package, None)  # `import package` raises ImportError
    target = tmp_path / f"trials.{suffix}"
    err = _fails(["export", spec, "--storage", url, "-o", str(target)], capsys)
    assert err == (
        f"tether: error: tether export to {suffix} needs {package}: install tether[export]\n"
    )
    assert not target.exists()


def test_a_column_of_numbers_and_words_is_written_as_text(tmp_path: Path) -> None:
    """A parameter that is a number in one study and a word in another (Parquet holds one
    type per column)."""
    from tether.search.results.export import write_trials

    target = tmp_path / "mixed.parquet"
    write_trials(
        [{"params_norm": 2.0}, {"params_norm": "mars"}, {"params_norm": None}], str(target)
    )
    written = list(pd.read_parquet(target).params_norm)
    assert written[:2] == ["2.0", "mars"]
    assert pd.isna(written[2])
