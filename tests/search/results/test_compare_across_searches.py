"""The comparison of repeated searches against numbers worked out by hand: each repeat's rows
with the configuration it chose, and one row per method across the repeats, whose interval is
over the searches and whose difference pairs repeat r of a method with repeat r of the
baseline."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
import csv
import html
import io
import json
import math

import optuna
import pytest

from tests.search.results.conftest import add_study
from tests.search.results.conftest import evaluation
from tests.search.results.conftest import make_specs
from tether.search.results.compare import ACROSS_TITLE
from tether.search.results.compare import Row
from tether.search.results.compare import across_searches
from tether.search.results.compare import as_csv
from tether.search.results.compare import as_html
from tether.search.results.compare import as_json
from tether.search.results.compare import as_markdown
from tether.search.results.compare import as_text
from tether.search.results.compare import collect


T_2 = 4.302652729911275  # t(0.975, 2)

STANDARD = [[0.70, 0.72], [0.72, 0.74], [0.68, 0.70]]  # search means 0.71, 0.73, 0.69
MARS = [[0.80, 0.82], [0.76, 0.78], [0.78, 0.80]]  # search means 0.81, 0.77, 0.79
# each: mean over searches 0.71 / 0.79, sd 0.02; MARS minus STANDARD, repeat by repeat:
# 0.10, 0.04, 0.10, mean 0.08, sd sqrt(0.0012)
TITLE = html.escape(ACROSS_TITLE)
MARS_TRIALS = [(0.5,), (0.4, 0.6), (0.7, 0.3)]  # repeat r's best: radius 0.5, 0.6, 0.7


@pytest.fixture
def storage() -> optuna.storages.BaseStorage:
    return optuna.storages.InMemoryStorage()


@pytest.fixture
def searched(storage: optuna.storages.BaseStorage) -> list[Row]:
    """Three searches of standard and MARS-PGM, each evaluated over seeds 0 and 1; L2-SP
    searched in each, never evaluated."""
    specs = make_specs(budget={"repeats": 3})
    for spec, standard, mars, values in zip(specs, STANDARD, MARS, MARS_TRIALS, strict=True):
        add_study(storage, spec, "standard", evaluated=evaluation(standard))
        best = values.index(max(values))
        add_study(
            storage,
            spec,
            "mars-pgm",
            values=values,
            evaluated=evaluation(mars, best_trial=best, seconds=10.0),
        )
        add_study(storage, spec, "l2-sp")
    return collect(specs, storage, baseline="standard")


def _across(rows: list[Row]) -> dict[str, Row]:
    return {r.method: r for r in across_searches(rows)}


def test_each_repeat_has_its_rows_with_the_configuration_it_chose(searched: list[Row]) -> None:
    mars = [r for r in searched if r.method == "mars-pgm"]
    assert [r.repeat for r in mars] == [0, 1, 2]
    assert [(r.best_trial, r.best_params) for r in mars] == [
        (0, {"radius": 0.5}),
        (1, {"radius": 0.6}),
        (0, {"radius": 0.7}),
    ]
    assert [r.diff_mean for r in mars] == pytest.approx([0.10, 0.04, 0.10])  # within a repeat


def test_across_searches_each_search_is_one_value(searched: list[Row]) -> None:
    rows = _across(searched)
    assert list(rows) == ["standard", "mars-pgm", "l2-sp"]
    half = T_2 * 0.02 / math.sqrt(3)
    for method, mean in (("standard", 0.71), ("mars-pgm", 0.79)):
        row = rows[method]
        assert (row.repeat, row.searches, row.seeds) == (None, 3, 6)
        assert row.test_mean == pytest.approx(mean)
        assert row.test_std == pytest.approx(0.02)
        assert (row.test_ci_low, row.test_ci_high) == pytest.approx((mean - half, mean + half))
    assert (rows["l2-sp"].searches, rows["l2-sp"].test_mean, rows["l2-sp"].test_ci_low) == (
        0,
        None,
        None,
    )


def test_the_difference_across_searches_pairs_repeat_r_with_the_baselines(
    searched: list[Row],
) -> None:
    rows = _across(searched)
    half = T_2 * math.sqrt(0.0012) / math.sqrt(3)
    mars = rows["mars-pgm"]
    assert mars.baseline == "standard"
    assert mars.diff_mean == pytest.approx(0.08)
    assert (mars.diff_ci_low, mars.diff_ci_high) == pytest.approx((0.08 - half, 0.08 + half))
    assert rows["standard"].diff_mean is None
    assert rows["l2-sp"].diff_mean is None


def test_across_searches_totals_the_cost_and_averages_the_validation(
    searched: list[Row],
) -> None:
    mars = _across(searched)["mars-pgm"]
    assert (mars.complete, mars.pruned, mars.failed) == (5, 0, 0)
    assert (mars.search_seconds, mars.eval_seconds) == (5.0, 30.0)
    assert mars.best_val == pytest.approx((0.5 + 0.6 + 0.7) / 3)
    assert (mars.best_trial, mars.best_params) == (None, {})
    assert (mars.device, mars.eval_device) == ("cpu", "cpu")


def test_a_repeat_the_baseline_lacks_leaves_its_pair_out(
    storage: optuna.storages.BaseStorage,
) -> None:
    specs = make_specs(budget={"repeats": 3})
    for r, spec in enumerate(specs):
        if r != 1:  # the baseline's second search was never evaluated
            add_study(storage, spec, "standard", evaluated=evaluation(STANDARD[r]))
        add_study(storage, spec, "mars-pgm", evaluated=evaluation(MARS[r]))
    mars = _across(collect(specs, storage, baseline="standard"))["mars-pgm"]
    assert mars.searches == 3
    assert mars.diff_mean == pytest.approx(0.10)  # repeats 0 and 2: 0.10, 0.10
    assert (mars.diff_ci_low, mars.diff_ci_high) == pytest.approx((0.10, 0.10))


def test_conditions_pair_the_searches_within_their_condition(
    storage: optuna.storages.BaseStorage,
) -> None:
    specs = make_specs(
        budget={"repeats": 2},
        conditions={
            "n20": {"set": {"data.noise": "symmetric", "data.noise_rate": 0.2}},
            "n40": {"set": {"data.noise": "symmetric", "data.noise_rate": 0.4}},
        },
    )
    shift = {"n20": 0.0, "n40": -0.2}
    for spec in specs:
        low = shift[spec.condition or ""]
        add_study(storage, spec, "standard", evaluated=evaluation([0.6 + low, 0.6 + low]))
        gain = 0.05 if spec.repeat == 0 else 0.15  # n40 gains as much as n20
        add_study(storage, spec, "mars-pgm", evaluated=evaluation([0.6 + low + gain] * 2))
    rows = {(r.condition, r.method): r for r in across_searches(collect(specs, storage))}
    assert len(rows) == 4
    for condition, low in shift.items():
        assert rows[condition, "mars-pgm"].test_mean == pytest.approx(0.7 + low)
    rows = {
        (r.condition, r.method): r
        for r in across_searches(collect(specs, storage, baseline="standard"))
    }
    assert rows["n20", "mars-pgm"].diff_mean == pytest.approx(0.10)
    assert rows["n40", "mars-pgm"].diff_mean == pytest.approx(0.10)
    assert rows["n40", "mars-pgm"].diff_ci_low == pytest.approx(0.10 - 12.706204736174694 * 0.05)


def test_one_search_has_no_rows_across_searches(storage: optuna.storages.BaseStorage) -> None:
    (spec,) = make_specs()
    add_study(storage, spec, "standard", evaluated=evaluation(STANDARD[0]))
    add_study(storage, spec, "mars-pgm", evaluated=evaluation(MARS[0]))
    rows = collect(spec, storage, baseline="standard")
    assert across_searches(rows) == []
    assert [r.repeat for r in rows] == [0, 0]
    for table in (as_text(rows), as_markdown(rows), as_html(rows)):
        assert ACROSS_TITLE not in table
        assert "configuration" not in table
        assert "repeat" not in table
    assert [r["repeat"] for r in json.loads(as_json(rows))] == [0, 0]


def test_the_text_shows_each_repeat_then_the_rows_across_them(searched: list[Row]) -> None:
    per_search, across = as_text(searched).split("\n\n")
    header, *lines = per_search.splitlines()
    assert header.split()[:2] == ["repeat", "method"]
    assert header.split()[-1] == "configuration"
    mars = [line for line in lines if " mars-pgm " in line]
    assert [line.split()[0] for line in mars] == ["0", "1", "2"]
    assert [line.split()[-1] for line in mars] == ["radius=0.5", "radius=0.6", "radius=0.7"]
    title, header, *lines = across.splitlines()
    assert title == ACROSS_TITLE
    assert "test % mean +- std [95% CI] over searches" in header
    assert "vs standard (paired by repeat, 95% CI)" in header
    mars_line = next(line for line in lines if line.startswith("mars-pgm"))
    assert "79.0 +- 2.0 [74.0, 84.0] (n=3)" in mars_line
    assert "+8.0 [-0.6, +16.6]" in mars_line
    assert mars_line.split()[1] == "3"  # searches


@pytest.mark.parametrize(("write", "title"), [(as_markdown, ACROSS_TITLE), (as_html, TITLE)])
def test_markdown_and_html_carry_both_tables(
    write: Callable[[Sequence[Row]], str], title: str, searched: list[Row]
) -> None:
    table = write(searched)
    assert title in table
    assert "79.0 +- 2.0 [74.0, 84.0] (n=3)" in table
    assert "radius=0.6" in table


def test_json_and_csv_give_the_rows_across_searches_after_each_repeats(
    searched: list[Row],
) -> None:
    records = json.loads(as_json(searched))
    assert [r["repeat"] for r in records] == [0] * 3 + [1] * 3 + [2] * 3 + [None] * 3
    across = {r["method"]: r for r in records if r["repeat"] is None}
    assert across["mars-pgm"]["searches"] == 3
    assert across["mars-pgm"]["diff_mean"] == pytest.approx(0.08)
    assert across["mars-pgm"]["best_params"] == {}
    assert records[4]["best_params"] == {"radius": 0.6}
    lines = list(csv.DictReader(io.StringIO(as_csv(searched))))
    assert [r["repeat"] for r in lines] == ["0"] * 3 + ["1"] * 3 + ["2"] * 3 + [""] * 3
    assert float(lines[-2]["test_mean"]) == pytest.approx(0.79)
    assert float(lines[-2]["test_ci_low"]) == pytest.approx(0.79 - T_2 * 0.02 / math.sqrt(3))
