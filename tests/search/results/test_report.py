"""The HTML report: the comparison table first, the setup, then one colour per method, one
facet per condition and Optuna's figures beside Tether's."""

from __future__ import annotations

from dataclasses import replace
import math
from pathlib import Path
import re

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial
from optuna.trial import TrialState
import plotly.graph_objects as go
import pytest

from tests.search.results.conftest import add_study
from tests.search.results.conftest import evaluation
from tests.search.results.conftest import make_specs
from tether.search.results.compare import collect
from tether.search.results.report import MIN_IMPORTANCE_TRIALS
from tether.search.results.report import comparison_figure
from tether.search.results.report import cost_quality_figure
from tether.search.results.report import difference_figure
from tether.search.results.report import importance_figure
from tether.search.results.report import learning_curves_figure
from tether.search.results.report import method_colours
from tether.search.results.report import sections
from tether.search.results.report import write_report
from tether.search.spec import StudySpec
from tether.search.storage import storage_url
from tether.version import __version__


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


def _trial(
    value: float | None, *, state: TrialState = TrialState.COMPLETE, **params: float
) -> FrozenTrial:
    """A trial with ``params`` (log-uniform) that reported 0.3, then its value (0.4 if none)."""
    return optuna.trial.create_trial(
        state=state,
        value=value,
        params=params,
        distributions={p: FloatDistribution(1e-3, 10.0, log=True) for p in params},
        intermediate_values={1: 0.3, 2: 0.4 if value is None else value},
    )


def _colour_of(trace: go.BaseTraceType) -> str | None:
    marker = getattr(trace, "marker", None)
    line = getattr(trace, "line", None)
    return (marker.color if marker is not None else None) or (
        line.color if line is not None else None
    )


def test_the_report_opens_with_the_comparison_table(
    storage: optuna.storages.BaseStorage, tmp_path: Path
) -> None:
    (spec,) = make_specs()
    _search(storage, spec)
    page = write_report(spec, storage, tmp_path / "report.html", baseline="standard").read_text()
    first = page.split("<section>")[1]
    assert first.startswith('<div class="table-wrap"><table>')
    assert page.index("</table>") < page.index("<figure")
    assert "<th>vs standard (paired, 95% CI)</th>" in first
    assert "<td>+5.0 [+1.1, +8.9]</td>" in first
    assert "<td>78.0 +- 2.9 [73.3, 82.7] (n=4)</td>" in first


def test_then_come_the_spec_the_storage_the_date_and_the_versions(tmp_path: Path) -> None:
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/t.db")
    (spec,) = make_specs()
    _search(storage, spec)
    page = write_report(spec, storage, tmp_path / "report.html").read_text()
    setup = page.split("<section>")[2]
    assert setup.startswith("<details open><summary>Setup")
    assert f"<code>{storage_url(storage)}</code>" in setup
    assert "<code>digits.yaml</code>" in setup
    assert "radius=[0.05, 1] log, head_radius=[1, 10] log" in setup
    assert "<dt>written</dt>" in setup
    assert f"tether {__version__}, optuna {optuna.__version__}" in setup


def test_plotly_js_is_inlined_once_so_the_page_opens_offline(
    storage: optuna.storages.BaseStorage, tmp_path: Path
) -> None:
    (spec,) = make_specs()
    _search(storage, spec)
    page = write_report(spec, storage, tmp_path / "report.html").read_text()
    assert page.count("* plotly.js v") == 1
    assert "<script src" not in page
    figures = re.findall(r'<figure class="plot" data-figure="(\w+)">', page)
    assert figures == ["comparison", "cost", "history", "timeline", "edf", "params"]
    assert page.count("Plotly.newPlot(") == len(figures)


def test_accuracies_are_dots_with_intervals_on_an_axis_that_spans_them(
    storage: optuna.storages.BaseStorage,
) -> None:
    (spec,) = make_specs()
    _search(storage, spec)
    rows = collect(spec, storage, baseline="standard")
    figure = comparison_figure(rows, method_colours([spec]))
    assert figure is not None
    traces = {t.name: t for t in figure.data}
    assert list(traces) == ["standard", "mars-pgm"]  # l2-sp was not evaluated
    mars = traces["mars-pgm"]
    assert list(mars.x) == pytest.approx([78.0])
    half = 100 * T_3 * math.sqrt(0.0026 / 3) / 2
    assert list(mars.error_x.array) == pytest.approx([half])
    low, high = figure.layout.xaxis.range
    assert 65 < low < 78.0 - half  # not from zero
    assert 78.0 + half < high < 90
    difference = difference_figure(rows, method_colours([spec]))
    assert difference is not None
    assert [t.name for t in difference.data] == ["mars-pgm"]
    assert difference.layout.xaxis.range[0] <= 0 <= difference.layout.xaxis.range[1]


def test_each_evaluated_method_is_one_point_at_its_cost_and_interval(
    storage: optuna.storages.BaseStorage,
) -> None:
    (spec,) = make_specs()
    _search(storage, spec)
    colours = method_colours([spec])
    figure = cost_quality_figure(collect(spec, storage), colours)
    assert figure is not None
    traces = {t.name: t for t in figure.data}
    assert list(traces) == ["standard", "mars-pgm"]
    standard, mars = traces["standard"], traces["mars-pgm"]
    assert (list(standard.x), list(mars.x)) == ([300 / 3600], [3600 / 3600])
    assert list(mars.y) == pytest.approx([78.0])
    assert list(mars.error_y.array) == pytest.approx([100 * T_3 * math.sqrt(0.0026 / 3) / 2])
    assert mars.marker.color == colours["mars-pgm"]


def test_conditions_are_facets_not_overlays(
    storage: optuna.storages.BaseStorage, tmp_path: Path
) -> None:
    specs = make_specs(conditions=NOISY)
    for spec in specs:
        _search(storage, spec)
    rows = collect(specs, storage)
    for figure in (
        comparison_figure(rows, method_colours(specs)),
        cost_quality_figure(rows, method_colours(specs)),
    ):
        assert figure is not None
        assert [a.text for a in figure.layout.annotations] == ["n20", "n40"]
        assert [(t.name, t.xaxis) for t in figure.data] == [
            ("standard", "x"),
            ("mars-pgm", "x"),
            ("standard", "x2"),
            ("mars-pgm", "x2"),
        ]
        assert [t.showlegend for t in figure.data] == [True, True, False, False]
    page = write_report(specs, storage, tmp_path / "report.html").read_text()
    assert page.count("<h2>") == 3  # the comparison, then each condition's search
    assert page.count("<table>") == 1
    assert 'data-figure="conditions"' in page


def test_with_repeats_each_search_has_its_facet_and_section_and_the_table_its_summary(
    storage: optuna.storages.BaseStorage, tmp_path: Path
) -> None:
    specs = make_specs(conditions=NOISY, budget={"repeats": 2})
    for spec in specs:
        _search(storage, spec)
    figure = comparison_figure(collect(specs, storage), method_colours(specs))
    assert figure is not None
    assert [a.text for a in figure.layout.annotations] == ["n20", "n40", "n20 r1", "n40 r1"]
    page = write_report(specs, storage, tmp_path / "report.html").read_text()
    assert page.count("<h2>") == 5  # the comparison, then t.n20, t.n40, t.n20~r1, t.n40~r1
    assert "<h2>Search: t.n40~r1</h2>" in page
    assert page.count("<table>") == 2  # each search's rows, then across the searches
    assert "Mean and standard deviation over the searches." in page


def test_every_method_has_its_own_colour_whatever_the_condition() -> None:
    specs = make_specs(conditions=NOISY)
    colours = method_colours(specs)
    assert list(colours) == ["standard", "mars-pgm", "l2-sp"]
    assert len(set(colours.values())) == 3
    assert method_colours(specs[1:]) == colours
    reordered = replace(specs[0], methods=dict(reversed(specs[0].methods.items())))
    assert list(method_colours([reordered])) == ["l2-sp", "mars-pgm", "standard"]
    assert method_colours([reordered]) == colours  # the sorted names pick the colours


def test_a_method_has_the_same_colour_in_every_figure(
    storage: optuna.storages.BaseStorage,
) -> None:
    specs = make_specs(conditions=NOISY)
    for spec in specs:
        _search(storage, spec)
    colours = method_colours(specs)
    rows = collect(specs, storage, baseline="standard")
    drawn = [
        (plot.name, trace)
        for section in sections(specs, storage, rows, colours)
        for plot in section.plots
        for trace in plot.figure.data
    ]
    assert {name for name, _ in drawn} >= {"comparison", "history", "timeline", "edf", "params"}
    for name, trace in drawn:
        assert _colour_of(trace) == colours[trace.legendgroup], (name, trace.name)


def test_the_history_is_one_small_multiple_per_method(
    storage: optuna.storages.BaseStorage,
) -> None:
    (spec,) = make_specs()
    _search(storage, spec)
    colours = method_colours([spec])
    rows = collect(spec, storage)
    search = sections([spec], storage, rows, colours)[1]
    (history,) = [p.figure for p in search.plots if p.name == "history"]
    assert [a.text for a in history.layout.annotations] == ["standard", "mars-pgm", "l2-sp"]
    assert {t.xaxis for t in history.data} == {"x", "x2", "x3"}
    best = [t for t in history.data if t.name == "mars-pgm: best so far"]
    assert [list(t.y) for t in best] == [pytest.approx([50.0, 60.0, 70.0])]


def test_learning_curves_show_every_trial_pruned_ones_dotted(
    storage: optuna.storages.BaseStorage,
) -> None:
    (spec,) = make_specs()
    study = add_study(storage, spec, "mars-pgm", values=())
    study.add_trial(_trial(0.6, radius=0.1))
    study.add_trial(_trial(None, state=TrialState.PRUNED, radius=0.2))
    figure = learning_curves_figure({"mars-pgm": study}, method_colours([spec]))
    assert figure is not None
    assert [(t.name, t.line.dash) for t in figure.data] == [
        ("mars-pgm trial 0", None),
        ("mars-pgm trial 1", "dot"),
    ]
    assert list(figure.data[1].y) == pytest.approx([30.0, 40.0])


def test_importance_needs_enough_complete_trials(
    storage: optuna.storages.BaseStorage,
) -> None:
    (spec,) = make_specs()
    study = add_study(storage, spec, "l2-sp", values=())
    colours = method_colours([spec])
    for i in range(MIN_IMPORTANCE_TRIALS - 1):
        study.add_trial(_trial(0.5 + i / 100, alpha=0.01 * (i + 1), beta=1.0 / (i + 1)))
    figure, notes = importance_figure({"l2-sp": study}, colours)
    assert figure is None
    (note,) = notes
    assert f"l2-sp (19): it takes {MIN_IMPORTANCE_TRIALS} complete trials" in note
    study.add_trial(_trial(0.9, alpha=0.5, beta=0.5))
    figure, notes = importance_figure({"l2-sp": study}, colours)
    assert notes == []
    assert figure is not None
    assert sorted(figure.data[0].y) == ["alpha", "beta"]
    assert figure.data[0].marker.color == colours["l2-sp"]


def test_an_unknown_baseline_writes_nothing(
    storage: optuna.storages.BaseStorage, tmp_path: Path
) -> None:
    (spec,) = make_specs()
    _search(storage, spec)
    with pytest.raises(ValueError, match="'bss'"):
        write_report(spec, storage, tmp_path / "report.html", baseline="bss")
    assert not (tmp_path / "report.html").exists()
