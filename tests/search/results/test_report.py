"""The HTML report: the comparison table on top, then cost against test accuracy per method."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest

from tests.search.results.conftest import add_study
from tests.search.results.conftest import evaluation
from tests.search.results.conftest import make_specs
from tether.search.results.compare import collect
from tether.search.results.report import cost_quality_figure
from tether.search.results.report import method_colours
from tether.search.results.report import write_report
from tether.search.spec import StudySpec


T_3 = 3.182446305284263  # t(0.975, 3)
NOISY = {
    "n20": {"set": {"data.noise": "symmetric", "data.noise_rate": 0.2}},
    "n40": {"set": {"data.noise": "symmetric", "data.noise_rate": 0.4}},
}


@pytest.fixture
def storage() -> optuna.storages.BaseStorage:
    return optuna.storages.InMemoryStorage()


def _search(storage: optuna.storages.BaseStorage, spec: StudySpec) -> None:
    """Standard: one trial of 60 s, evaluated in 240 s; MARS-PGM: three trials of 600 s,
    evaluated in 1800 s; L2-SP: searched, not evaluated."""
    add_study(
        storage,
        spec,
        "standard",
        seconds=(60.0,),
        evaluated=evaluation([0.70, 0.72, 0.74, 0.76], seconds=240.0),
    )
    add_study(
        storage,
        spec,
        "mars-pgm",
        values=(0.5, 0.6, 0.7),
        seconds=(600.0,) * 3,
        evaluated=evaluation([0.75, 0.80, 0.76, 0.81], seconds=1800.0),
    )
    add_study(storage, spec, "l2-sp")


def test_the_report_opens_with_the_comparison_table(
    storage: optuna.storages.BaseStorage, tmp_path: Path
) -> None:
    (spec,) = make_specs()
    _search(storage, spec)
    page = write_report(spec, storage, tmp_path / "report.html", baseline="standard").read_text()
    first = page.split("<section>")[1]
    assert first.startswith("<table>")
    assert "<th>vs standard (paired, 95% CI)</th>" in first
    assert "<td>+5.0 [+1.1, +8.9]</td>" in first
    assert "<td>78.0 +- 2.9 [73.3, 82.7] (n=4)</td>" in first
    assert "against compute" in page


def test_each_evaluated_method_is_one_point_at_its_cost_and_interval(
    storage: optuna.storages.BaseStorage,
) -> None:
    (spec,) = make_specs()
    _search(storage, spec)
    colours = method_colours([spec])
    figure = cost_quality_figure(collect(spec, storage), colours)
    traces = {t.name: t for t in figure.data}
    assert list(traces) == ["standard", "mars-pgm"]
    standard, mars = traces["standard"], traces["mars-pgm"]
    assert (list(standard.x), list(mars.x)) == ([300 / 3600], [3600 / 3600])
    assert list(mars.y) == pytest.approx([78.0])
    assert list(mars.error_y.array) == pytest.approx([100 * T_3 * math.sqrt(0.0026 / 3) / 2])
    assert mars.marker.color == colours["mars-pgm"]


def test_with_conditions_each_method_has_a_point_per_condition(
    storage: optuna.storages.BaseStorage, tmp_path: Path
) -> None:
    specs = make_specs(conditions=NOISY)
    for spec in specs:
        _search(storage, spec)
    figure = cost_quality_figure(collect(specs, storage), method_colours(specs))
    assert [(t.name, tuple(t.text)) for t in figure.data] == [
        ("standard", ("n20", "n40")),
        ("mars-pgm", ("n20", "n40")),
    ]
    page = write_report(specs, storage, tmp_path / "report.html").read_text()
    assert page.count("<h2>") == 3
    assert page.count("<table>") == 1


def test_with_repeats_each_search_has_its_section_and_point_and_the_table_its_summary(
    storage: optuna.storages.BaseStorage, tmp_path: Path
) -> None:
    specs = make_specs(conditions=NOISY, budget={"repeats": 2})
    for spec in specs:
        _search(storage, spec)
    figure = cost_quality_figure(collect(specs, storage), method_colours(specs))
    assert [(t.name, tuple(t.text)) for t in figure.data] == [
        ("standard", ("n20", "n20 r1", "n40", "n40 r1")),
        ("mars-pgm", ("n20", "n20 r1", "n40", "n40 r1")),
    ]
    page = write_report(specs, storage, tmp_path / "report.html").read_text()
    assert page.count("<h2>") == 5  # all, then t.n20, t.n20~r1, t.n40, t.n40~r1
    assert "<h2>t.n40~r1</h2>" in page
    assert page.count("<table>") == 2  # each search's rows, then across the searches
    assert "mean +- std over searches" in page


def test_every_method_has_its_own_colour_whatever_the_condition() -> None:
    specs = make_specs(conditions=NOISY)
    colours = method_colours(specs)
    assert list(colours) == ["standard", "mars-pgm", "l2-sp"]
    assert len(set(colours.values())) == 3
    assert method_colours(specs[1:]) == colours


def test_an_unknown_baseline_writes_nothing(
    storage: optuna.storages.BaseStorage, tmp_path: Path
) -> None:
    (spec,) = make_specs()
    _search(storage, spec)
    with pytest.raises(ValueError, match="'bss'"):
        write_report(spec, storage, tmp_path / "report.html", baseline="bss")
    assert not (tmp_path / "report.html").exists()
