"""The comparison table against numbers worked out by hand: the interval of the test mean, the
difference to the baseline paired by seed, the cost of search and evaluation, in every format."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
import csv
import io
import json
import math

import optuna
import pytest

from tests.search.results.conftest import add_study
from tests.search.results.conftest import evaluation
from tests.search.results.conftest import make_specs
from tether.search.results.compare import Row
from tether.search.results.compare import as_csv
from tether.search.results.compare import as_html
from tether.search.results.compare import as_json
from tether.search.results.compare import as_markdown
from tether.search.results.compare import as_text
from tether.search.results.compare import collect
from tether.search.spec import StudySpec


T_1, T_2, T_3 = 12.706204736174694, 4.302652729911275, 3.182446305284263
"""t(0.975, n - 1) for n = 2, 3, 4: the Student-t table's 12.706, 4.303 and 3.182."""

STANDARD = [0.70, 0.72, 0.74, 0.76]  # mean 0.73, sd sqrt(0.002 / 3)
MARS = [0.75, 0.80, 0.76, 0.81]  # mean 0.78, sd sqrt(0.0026 / 3); minus STANDARD, seed by
# seed: 0.05, 0.08, 0.02, 0.05, mean 0.05, sd sqrt(0.0018 / 3)


@pytest.fixture
def storage() -> optuna.storages.BaseStorage:
    return optuna.storages.InMemoryStorage()


@pytest.fixture
def spec() -> StudySpec:
    return make_specs()[0]


@pytest.fixture
def finished(storage: optuna.storages.BaseStorage, spec: StudySpec) -> list[Row]:
    """Standard and MARS-PGM evaluated over seeds 0..3; L2-SP searched, not evaluated."""
    add_study(storage, spec, "standard", evaluated=evaluation(STANDARD))
    add_study(storage, spec, "mars-pgm", evaluated=evaluation(MARS))
    add_study(storage, spec, "l2-sp")
    return collect(spec, storage, baseline="standard")


def _by_method(rows: list[Row]) -> dict[str, Row]:
    return {r.method: r for r in rows}


def test_the_test_mean_has_the_student_t_interval_over_seeds(finished: list[Row]) -> None:
    rows = _by_method(finished)
    half = T_3 * math.sqrt(0.002 / 3) / 2
    assert rows["standard"].test_ci_low == pytest.approx(0.73 - half)
    assert rows["standard"].test_ci_high == pytest.approx(0.73 + half)
    half = T_3 * math.sqrt(0.0026 / 3) / 2
    assert rows["mars-pgm"].test_ci_low == pytest.approx(0.78 - half)
    assert rows["mars-pgm"].test_ci_high == pytest.approx(0.78 + half)
    assert rows["mars-pgm"].seeds == 4


def test_the_difference_to_the_baseline_pairs_the_runs_of_one_seed(finished: list[Row]) -> None:
    mars = _by_method(finished)["mars-pgm"]
    half = T_3 * math.sqrt(0.0018 / 3) / 2  # the unpaired one would be about 0.065
    assert mars.baseline == "standard"
    assert mars.diff_mean == pytest.approx(0.05)
    assert mars.diff_ci_low == pytest.approx(0.05 - half)
    assert mars.diff_ci_high == pytest.approx(0.05 + half)


def test_the_baseline_and_an_unevaluated_method_have_no_difference(finished: list[Row]) -> None:
    rows = _by_method(finished)
    for method in ("standard", "l2-sp"):
        assert rows[method].baseline == "standard"
        assert (rows[method].diff_mean, rows[method].diff_ci_low) == (None, None)
    assert rows["l2-sp"].test_ci_low is None


def test_a_seed_whose_run_failed_leaves_its_pair_out(
    storage: optuna.storages.BaseStorage, spec: StudySpec
) -> None:
    add_study(storage, spec, "standard", evaluated=evaluation(STANDARD))
    add_study(storage, spec, "mars-pgm", evaluated=evaluation([MARS[0], None, *MARS[2:]]))
    mars = _by_method(collect(spec, storage, baseline="standard"))["mars-pgm"]
    half = T_2 * 0.01  # seeds 0, 2, 3: differences 0.05, 0.02, 0.05, sd sqrt(0.0003)
    assert mars.seeds == 3
    assert mars.diff_mean == pytest.approx(0.04)
    assert (mars.diff_ci_low, mars.diff_ci_high) == pytest.approx((0.04 - half, 0.04 + half))


def test_methods_evaluated_over_fewer_seeds_pair_the_seeds_they_share(
    storage: optuna.storages.BaseStorage, spec: StudySpec
) -> None:
    add_study(storage, spec, "standard", evaluated=evaluation(STANDARD))
    add_study(storage, spec, "mars-pgm", evaluated=evaluation(MARS[:2]))
    mars = _by_method(collect(spec, storage, baseline="standard"))["mars-pgm"]
    half = T_1 * math.sqrt(2 * 0.015**2) / math.sqrt(2)  # differences 0.05, 0.08
    assert mars.diff_mean == pytest.approx(0.065)
    assert (mars.diff_ci_low, mars.diff_ci_high) == pytest.approx((0.065 - half, 0.065 + half))


def test_one_seed_gives_a_difference_but_no_interval(
    storage: optuna.storages.BaseStorage, spec: StudySpec
) -> None:
    add_study(storage, spec, "standard", evaluated=evaluation(STANDARD))
    add_study(storage, spec, "mars-pgm", evaluated=evaluation([0.80]))
    mars = _by_method(collect(spec, storage, baseline="standard"))["mars-pgm"]
    assert mars.diff_mean == pytest.approx(0.10)
    assert (mars.diff_ci_low, mars.diff_ci_high) == (None, None)
    assert (mars.test_ci_low, mars.test_ci_high) == (None, None)
    line = as_text([mars]).splitlines()[1]
    assert "+10.0" in line
    assert "[" not in line


@pytest.mark.parametrize("standard", ["unevaluated", "absent"])
def test_a_baseline_without_evaluation_gives_no_difference_not_a_crash(
    standard: str, storage: optuna.storages.BaseStorage, spec: StudySpec
) -> None:
    if standard == "unevaluated":
        add_study(storage, spec, "standard")
    add_study(storage, spec, "mars-pgm", evaluated=evaluation(MARS))
    rows = collect(spec, storage, baseline="standard")
    assert all(r.diff_mean is None and r.diff_ci_low is None for r in rows)
    header, *lines = as_text(rows).splitlines()
    assert "vs standard (paired, 95% CI)" in header
    assert all(line.split()[-4] == "-" for line in lines)  # before search h, eval h, device


def test_another_baseline_turns_the_differences_around(
    storage: optuna.storages.BaseStorage, spec: StudySpec
) -> None:
    add_study(storage, spec, "standard", evaluated=evaluation(STANDARD))
    add_study(storage, spec, "mars-pgm", evaluated=evaluation(MARS))
    rows = _by_method(collect(spec, storage, baseline="mars-pgm"))
    assert rows["standard"].diff_mean == pytest.approx(-0.05)
    assert rows["mars-pgm"].diff_mean is None
    assert "vs mars-pgm (paired, 95% CI)" in as_text(list(rows.values()))


def test_no_baseline_no_difference_column(
    storage: optuna.storages.BaseStorage, spec: StudySpec
) -> None:
    add_study(storage, spec, "standard", evaluated=evaluation(STANDARD))
    rows = collect(spec, storage)
    assert rows[0].baseline is None
    assert "paired" not in as_text(rows)


def test_a_baseline_the_spec_does_not_have_is_refused(
    storage: optuna.storages.BaseStorage, spec: StudySpec
) -> None:
    with pytest.raises(ValueError, match=r"\(standard, mars-pgm, l2-sp\), got 'bss'"):
        collect(spec, storage, baseline="bss")


def test_conditions_pair_within_their_condition(storage: optuna.storages.BaseStorage) -> None:
    specs = make_specs(
        conditions={
            "n20": {"set": {"data.noise": "symmetric", "data.noise_rate": 0.2}},
            "n40": {"set": {"data.noise": "symmetric", "data.noise_rate": 0.4}},
        }
    )
    scores = {
        ("n20", "standard"): [0.80, 0.82],
        ("n20", "mars-pgm"): [0.81, 0.85],  # + 0.01, 0.03
        ("n40", "standard"): [0.60, 0.62],
        ("n40", "mars-pgm"): [0.70, 0.74],  # + 0.10, 0.12
    }
    for spec in specs:
        for method in ("standard", "mars-pgm"):
            scored = scores[spec.condition or "", method]
            add_study(storage, spec, method, evaluated=evaluation(scored))
    rows = {(r.condition or "", r.method): r for r in collect(specs, storage, baseline="standard")}
    assert rows["n20", "mars-pgm"].diff_mean == pytest.approx(0.02)
    assert rows["n40", "mars-pgm"].diff_mean == pytest.approx(0.11)
    half = T_1 * math.sqrt(2 * 0.01**2) / math.sqrt(2)
    assert rows["n40", "mars-pgm"].diff_ci_low == pytest.approx(0.11 - half)


def test_search_and_evaluation_costs_are_apart(
    storage: optuna.storages.BaseStorage, spec: StudySpec
) -> None:
    add_study(
        storage,
        spec,
        "mars-pgm",
        values=(0.5, 0.6, 0.4),
        seconds=(10.0, 20.0, 30.0),
        devices=("cuda:1", "cuda:0", "cuda:1"),
        evaluated=evaluation(MARS, seconds=7200.0, device="cuda:2"),
    )
    (row,) = collect(spec, storage)
    assert (row.search_seconds, row.eval_seconds) == (60.0, 7200.0)
    assert row.hours == pytest.approx(7260 / 3600)
    assert (row.device, row.eval_device) == ("cuda:0/cuda:1", "cuda:2")
    header, line = as_text([row]).splitlines()
    assert header.split()[-5:] == ["search", "h", "eval", "h", "device"]
    assert line.split()[-3:] == ["0.017", "2.000", "cuda:0/cuda:1/cuda:2"]


def test_a_row_reports_the_trial_its_evaluation_re_ran(
    storage: optuna.storages.BaseStorage, spec: StudySpec
) -> None:
    """The search went on after the evaluation (trial 2 is better): the row's test accuracy
    is trial 1's, and so are its number, value and parameters."""
    values = (0.5, 0.7, 0.9)
    add_study(storage, spec, "mars-pgm", values=values, evaluated=evaluation(MARS, best_trial=1))
    add_study(storage, spec, "l2-sp", values=values)
    rows = _by_method(collect(spec, storage))
    mars, l2sp = rows["mars-pgm"], rows["l2-sp"]
    assert (mars.best_trial, mars.best_val, mars.best_params) == (1, 0.7, {"radius": 0.7})
    assert (l2sp.best_trial, l2sp.best_val, l2sp.best_params) == (2, 0.9, {"radius": 0.9})


@pytest.mark.parametrize("write", [as_text, as_markdown, as_html])
def test_the_tables_show_the_intervals_and_the_paired_difference(
    write: Callable[[Sequence[Row]], str], finished: list[Row]
) -> None:
    table = write(finished)
    for cell in (
        "test % mean +- std [95% CI]",
        "vs standard (paired, 95% CI)",
        "best trial",
        "search h",
        "eval h",
        "73.0 +- 2.6 [68.9, 77.1] (n=4)",
        "78.0 +- 2.9 [73.3, 82.7] (n=4)",
        "+5.0 [+1.1, +8.9]",
    ):
        assert cell in table


NEW_FIELDS = (
    "best_trial",
    "test_ci_low",
    "test_ci_high",
    "baseline",
    "diff_mean",
    "diff_ci_low",
    "diff_ci_high",
    "search_seconds",
    "eval_seconds",
    "eval_device",
    "hours",
)


def test_json_carries_every_new_field(finished: list[Row]) -> None:
    records = {r["method"]: r for r in json.loads(as_json(finished))}
    assert set(NEW_FIELDS) <= set(records["mars-pgm"])
    mars = _by_method(finished)["mars-pgm"]
    for field in NEW_FIELDS:
        assert records["mars-pgm"][field] == getattr(mars, field)
    assert records["standard"]["diff_mean"] is None
    assert records["mars-pgm"]["hours"] == pytest.approx(1 / 3600)


def test_csv_carries_every_new_field(finished: list[Row]) -> None:
    records = {r["method"]: r for r in csv.DictReader(io.StringIO(as_csv(finished)))}
    mars = records["mars-pgm"]
    assert set(NEW_FIELDS) <= set(mars)
    assert float(mars["diff_mean"]) == pytest.approx(0.05)
    assert float(mars["test_ci_high"]) == pytest.approx(0.78 + T_3 * math.sqrt(0.0026 / 3) / 2)
    assert (mars["baseline"], mars["best_trial"]) == ("standard", "0")
    assert (mars["search_seconds"], mars["eval_seconds"]) == ("1.0", "0.0")
    assert records["standard"]["diff_mean"] == ""
    assert json.loads(mars["best_params"]) == {"radius": 0.5}
