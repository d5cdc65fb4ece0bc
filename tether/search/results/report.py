"""One self-contained HTML file: what ``tether compare`` says, then the figures of the studies.

The page, top to bottom:

1. the comparison table of :mod:`~tether.search.results.compare`, with its 95 % intervals and
   the differences paired with the baseline: what a reader came for;
2. the setup: the spec (recipe, conditions, methods and their spaces, budget, sampler,
   pruner, evaluation), the storage (password masked), when the trials ran and when the
   report was written, and the versions the search ran with and the report was written with;
3. the methods compared, one facet per condition and repeat of the search (never overlaid):
   test accuracy, mean and 95 % interval over the evaluation seeds, on an axis that spans the
   values rather than one from zero; the difference to the baseline paired by seed; test
   accuracy against the device-hours of search and evaluation; with conditions, each method's
   test accuracy across them;
4. for each search (each condition, each repeat), Tether's figures beside the ones Optuna
   draws (``optuna.visualization``): each method's history as small multiples; the learning
   curves of every trial, pruned ones too (``plot_intermediate_values``); the trials'
   timeline (``plot_timeline``); the distribution of each method's values (``plot_edf``);
   validation accuracy against each searched parameter; the distance profile of each
   method's best trial; parameter importance (``plot_param_importances``) for the studies
   with :data:`MIN_IMPORTANCE_TRIALS` complete trials, a line saying why for the others.

A method has one colour in every figure (:func:`method_colours`). plotly.js is inlined once,
in the page's head, so the file opens offline.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
import datetime
import html
import importlib.metadata
import itertools
import json
import math
from pathlib import Path
import re
from typing import Any
import warnings

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial
from optuna.trial import TrialState
import optuna.visualization
import plotly
import plotly.colors
import plotly.graph_objects as go
import plotly.offline
from plotly.subplots import make_subplots

from tether.search.execution.studies import METRIC_NAMES
from tether.search.execution.studies import best_trial
from tether.search.execution.studies import find_studies
from tether.search.results.compare import Row
from tether.search.results.compare import across_searches
from tether.search.results.compare import as_html
from tether.search.results.compare import collect
from tether.search.spec import StudySpec
from tether.search.storage import storage_url
from tether.version import __version__


PALETTE = (*plotly.colors.qualitative.T10, *plotly.colors.qualitative.Dark24)
"""The methods' colours: Tableau 10, then plotly's Dark 24 (34 distinct colours)."""

MIN_IMPORTANCE_TRIALS = 20
"""Complete trials a study needs before its parameter importance is drawn."""

VALUE = f"{METRIC_NAMES[0]} (%)"
STATE_PATTERNS = {"COMPLETE": "", "PRUNED": "/", "FAIL": "x", "RUNNING": ".", "WAITING": "-"}
"""How the timeline tells a trial's state: the fill pattern (its colour is its method's)."""

CONFIG = {"displaylogo": False, "responsive": True}
STYLE = """
body{margin:0;background:#f3f4f6;color:#1f2328;
  font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1180px;margin:0 auto;padding:20px 32px 48px;background:#fff;min-height:100vh}
h1{font-size:1.6rem;margin:.4rem 0 .1rem}
h2{font-size:1.3rem;margin:2.4rem 0 .8rem;padding-bottom:.3rem;border-bottom:2px solid #d8dde3}
h3{font-size:1rem;margin:0 0 .2rem}
.note,figcaption{color:#57606a}
.note,figcaption{font-size:.88rem}
.table-wrap{overflow-x:auto;margin:.8rem 0 .4rem}
table{border-collapse:collapse;font-size:.9rem;font-variant-numeric:tabular-nums}
th,td{padding:5px 10px;border-bottom:1px solid #e3e6ea;text-align:left;white-space:nowrap}
thead th{background:#eef1f4;border-bottom:2px solid #c4cad2;font-weight:600;
  white-space:normal;vertical-align:bottom;min-width:3.5em}
tbody tr:nth-child(even){background:#fafbfc}
.swatch{display:inline-block;width:.8em;height:.8em;border-radius:50%;margin-right:.45em;
  vertical-align:-.05em}
details{margin:1.2rem 0}
summary{cursor:pointer;font-weight:600}
dl.setup{display:grid;grid-template-columns:max-content 1fr;gap:.3rem 1.2rem;margin:.8rem 0}
dl.setup dt{font-weight:600;color:#57606a}
dl.setup dd{margin:0}
dl.setup ul{margin:0;padding-left:1.1rem}
code,pre{font:.85rem/1.45 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
pre{background:#f6f8fa;padding:.8rem 1rem;overflow:auto;max-height:30rem;border-radius:6px}
figure.plot{margin:1.6rem 0 2rem}
"""


@dataclass(frozen=True)
class Plot:
    """One figure of the report: ``name`` (its ``data-figure`` attribute in the page), a
    title and a caption saying how to read it."""

    name: str
    title: str
    caption: str
    figure: go.Figure


@dataclass(frozen=True)
class Section:
    """A heading, its figures and one-line notes on what was left out and why."""

    heading: str
    plots: list[Plot]
    notes: list[str] = field(default_factory=list)


def method_colours(specs: Sequence[StudySpec]) -> dict[str, str]:
    """One colour per method of ``specs``, in the order the specs list them: the methods
    sorted by name take :data:`PALETTE` in turn, so a method's colour depends neither on the
    order a spec lists them in nor on the figure.

    Example:
        >>> from tether.search.spec import StudySpec
        >>> spec = StudySpec(name="t", recipe="r.yaml", methods={"standard": {}, "l2-sp": {}})
        >>> method_colours([spec])
        {'standard': '#F58518', 'l2-sp': '#4C78A8'}
    """
    methods = list(dict.fromkeys(m for spec in specs for m in spec.methods))
    palette = dict(zip(sorted(methods), itertools.cycle(PALETTE), strict=False))
    return {m: palette[m] for m in methods}


# --- the methods compared: rows of the table, one facet per condition and repeat ---------

Facet = tuple[str | None, int]
"""A search of a spec: its condition (None: none) and repeat."""


def _facet(row: Row) -> Facet:
    return row.condition, row.repeat or 0


def _where(condition: str | None, repeat: int | None) -> str:
    """The condition and repeat of a search, e.g. ``noise20 r1`` (empty: neither)."""
    return " ".join(part for part in (condition or "", f"r{repeat}" if repeat else "") if part)


def _facets(rows: Sequence[Row], *, shared_y: bool) -> tuple[go.Figure, dict[Facet, Any]]:
    """A figure with one subplot per search of ``rows`` (conditions across, repeats down) and
    the ``row=, col=`` of each."""
    conditions = list(dict.fromkeys(r.condition for r in rows))
    repeats = sorted({r.repeat or 0 for r in rows})
    cells = {
        (c, rep): {"row": i + 1, "col": j + 1}
        for i, rep in enumerate(repeats)
        for j, c in enumerate(conditions)
    }
    titles = [_where(c, rep) for rep in repeats for c in conditions]
    figure = make_subplots(
        rows=len(repeats),
        cols=len(conditions),
        shared_yaxes=shared_y,
        subplot_titles=titles if any(titles) else None,
        horizontal_spacing=0.04 if shared_y else 0.07,
        vertical_spacing=min(0.12, 0.9 / max(1, len(repeats) - 1)),
    )
    return figure, cells


def _evaluated(rows: Sequence[Row]) -> list[Row]:
    return [r for r in rows if r.test_mean is not None]


def _test_points(row: Row) -> tuple[float, float, float]:
    """Test mean and its 95 % interval in points (the mean twice without an interval)."""
    mean = 100 * (row.test_mean or 0.0)
    if row.test_ci_low is None or row.test_ci_high is None:
        return mean, mean, mean
    return mean, 100 * row.test_ci_low, 100 * row.test_ci_high


def _diff_points(row: Row) -> tuple[float, float, float]:
    """Paired difference to the baseline and its 95 % interval, in points."""
    mean = 100 * (row.diff_mean or 0.0)
    if row.diff_ci_low is None or row.diff_ci_high is None:
        return mean, mean, mean
    return mean, 100 * row.diff_ci_low, 100 * row.diff_ci_high


def tight_range(
    lows: Iterable[float], highs: Iterable[float], *, bounds: tuple[float, float] = (0.0, 100.0)
) -> list[float]:
    """An axis range spanning ``lows`` to ``highs`` with a margin, inside ``bounds``: where a
    few points separate the methods, the axis shows them, not the distance from zero.

    Example:
        >>> tight_range([71.0, 75.0], [73.0, 81.0])
        [70.0, 82.0]
        >>> tight_range([-40.0], [140.0])
        [0.0, 100.0]
    """
    low, high = min(lows), max(highs)
    margin = max(0.5, 0.1 * (high - low))
    return [max(bounds[0], low - margin), min(bounds[1], high + margin)]


def _interval_bars(points: Sequence[tuple[float, float, float]]) -> dict[str, Any]:
    return {
        "type": "data",
        "symmetric": False,
        "array": [high - mean for mean, _, high in points],
        "arrayminus": [mean - low for mean, low, _ in points],
        "thickness": 2,
        "width": 6,
    }


def _one_legend_entry_per_method(figure: go.Figure) -> None:
    """Show each legend group once (a method appears in every facet)."""
    seen: set[str] = set()
    for trace in figure.data:
        trace.showlegend = trace.legendgroup not in seen
        seen.add(trace.legendgroup)


def _dot_intervals(
    rows: Sequence[Row],
    colours: Mapping[str, str],
    points: Callable[[Row], tuple[float, float, float]],
    *,
    bounds: tuple[float, float],
    axis: str,
    zero: bool = False,
) -> go.Figure:
    """Each row's value and interval (``points(row)``, in points) as a dot and a bar across,
    one line per method, one facet per search; each axis spans its facet's intervals (and
    zero, if ``zero``)."""
    figure, cells = _facets(rows, shared_y=True)
    for facet, cell in cells.items():
        mine = [r for r in rows if _facet(r) == facet]
        if not mine:
            continue
        for row in mine:
            mean, low, high = points(row)
            figure.add_scatter(
                x=[mean],
                y=[row.method],
                error_x={**_interval_bars([(mean, low, high)]), "color": colours[row.method]},
                mode="markers",
                marker={"color": colours[row.method], "size": 11},
                name=row.method,
                legendgroup=row.method,
                hovertemplate=f"{row.method}: %{{x:.1f}} [{low:.1f}, {high:.1f}]<extra></extra>",
                **cell,
            )
        values = [points(r) for r in mine] + ([(0.0, 0.0, 0.0)] if zero else [])
        figure.update_xaxes(
            range=tight_range([v[1] for v in values], [v[2] for v in values], bounds=bounds),
            title_text=axis,
            **cell,
        )
    methods = list(dict.fromkeys(r.method for r in rows))
    figure.update_yaxes(categoryorder="array", categoryarray=methods[::-1])
    _one_legend_entry_per_method(figure)
    rows_of_facets = len({r.repeat or 0 for r in rows})
    figure.update_layout(height=rows_of_facets * (90 + 34 * len(methods)) + 60)
    return figure


def comparison_figure(rows: Sequence[Row], colours: Mapping[str, str]) -> go.Figure | None:
    """Test accuracy of each evaluated method: a dot at the mean over the evaluation seeds, a
    bar across its 95 % interval, one facet per search; None if none was evaluated."""
    evaluated = _evaluated(rows)
    if not evaluated:
        return None
    return _dot_intervals(
        evaluated, colours, _test_points, bounds=(0.0, 100.0), axis="test accuracy (%)"
    )


def difference_figure(rows: Sequence[Row], colours: Mapping[str, str]) -> go.Figure | None:
    """Each method's difference to the baseline, paired by seed, with its 95 % interval and a
    line at zero; None without a baseline or a paired difference."""
    paired = [r for r in rows if r.diff_mean is not None]
    if not paired:
        return None
    figure = _dot_intervals(
        paired,
        colours,
        _diff_points,
        bounds=(-100.0, 100.0),
        axis="difference (points)",
        zero=True,
    )
    figure.add_vline(x=0, line={"color": "#8c959f", "dash": "dash", "width": 1})
    return figure


def cost_quality_figure(rows: Sequence[Row], colours: Mapping[str, str]) -> go.Figure | None:
    """Test accuracy (mean, 95 % interval as error bars) against the device-hours of search
    and evaluation: in each search's facet, one point per method in its colour; None if no
    method was evaluated."""
    evaluated = _evaluated(rows)
    if not evaluated:
        return None
    figure, cells = _facets(evaluated, shared_y=False)
    for facet, cell in cells.items():
        for row in (r for r in evaluated if _facet(r) == facet):
            point = _test_points(row)
            figure.add_scatter(
                x=[row.hours],
                y=[point[0]],
                error_y={**_interval_bars([point]), "color": colours[row.method]},
                mode="markers",
                marker={"color": colours[row.method], "size": 11},
                name=row.method,
                legendgroup=row.method,
                hovertemplate=f"{row.method}: %{{y:.1f}} % in %{{x:.3g}} h<extra></extra>",
                **cell,
            )
        points = [_test_points(r) for r in evaluated if _facet(r) == facet]
        if points:
            figure.update_yaxes(
                range=tight_range([p[1] for p in points], [p[2] for p in points]), **cell
            )
    figure.update_xaxes(title_text="device-hours", rangemode="tozero")
    figure.update_yaxes(title_text="test accuracy (%)", col=1)
    _one_legend_entry_per_method(figure)
    figure.update_layout(height=60 + 340 * len({r.repeat or 0 for r in evaluated}))
    return figure


def by_condition_figure(rows: Sequence[Row], colours: Mapping[str, str]) -> go.Figure | None:
    """Each method's test accuracy across the conditions (e.g. noise rates), conditions along
    the axis; with repeated searches, the mean and standard deviation over them
    (:func:`~tether.search.results.compare.across_searches`). None with one condition."""
    if len({r.condition for r in rows}) < 2:
        return None
    across = across_searches(rows)
    figure = go.Figure()
    for method, colour in colours.items():
        points = [r for r in _evaluated(across or rows) if r.method == method]
        if points:
            figure.add_scatter(
                x=[r.condition or "-" for r in points],
                y=[100 * (r.test_mean or 0.0) for r in points],
                error_y={"type": "data", "array": [100 * (r.test_std or 0.0) for r in points]},
                mode="lines+markers",
                line={"color": colour},
                marker={"size": 9},
                name=method,
                legendgroup=method,
            )
    figure.update_layout(xaxis_title="condition", yaxis_title="test accuracy (%)", height=420)
    return figure


def overview(rows: Sequence[Row], colours: Mapping[str, str]) -> list[Plot]:
    """The figures of the table's rows: every method of every search side by side."""
    spread = "searches" if across_searches(rows) else "evaluation seeds"
    baseline = next((r.baseline for r in rows if r.baseline is not None), None)
    candidates = [
        (
            "comparison",
            "Test accuracy of each method's best configuration",
            "Dot: mean over the evaluation seeds; bar: its 95 % interval. One panel per "
            "condition and repeat; each axis spans its values, not zero to 100.",
            comparison_figure(rows, colours),
        ),
        (
            "difference",
            f"Difference to {baseline}, paired by seed",
            "Test accuracy minus the baseline's on the same seeds, in points, with the 95 % "
            "interval of the mean difference: an interval clear of the dashed zero line is a "
            "difference the seeds support.",
            difference_figure(rows, colours),
        ),
        (
            "cost",
            "Test accuracy against compute",
            "Device-hours of search and evaluation together; bars are the 95 % interval over "
            "the evaluation seeds.",
            cost_quality_figure(rows, colours),
        ),
        (
            "conditions",
            "Test accuracy per condition",
            f"Mean and standard deviation over the {spread}.",
            by_condition_figure(rows, colours),
        ),
    ]
    return [Plot(n, t, c, _styled(f)) for n, t, c, f in candidates if f is not None]


# --- one search: the studies of one spec, one per method ---------------------------------


def _complete(study: optuna.Study) -> list[FrozenTrial]:
    """The complete trials with a value, by number."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted((t for t in trials if t.value is not None), key=lambda t: t.number)


def _small_multiples(
    titles: Sequence[str],
    colours: Mapping[str, str] | None = None,
    *,
    height: int = 250,
    shared: bool = True,
) -> tuple[go.Figure, list[dict[str, int]]]:
    """One subplot per title, four to a row, sharing the y axis (unless not ``shared``);
    titles in their method's colour where ``colours`` gives one. The figure and each
    subplot's ``row=, col=``."""
    columns = min(4, len(titles))
    lines = math.ceil(len(titles) / columns)
    figure = make_subplots(
        rows=lines,
        cols=columns,
        subplot_titles=list(titles),
        shared_yaxes="all" if shared else False,
        horizontal_spacing=0.04 if shared else 0.12,
        vertical_spacing=min(0.3 / lines, 0.12),
    )
    if colours:
        for annotation, title in zip(figure.layout.annotations, titles, strict=True):
            annotation.font = {"color": colours.get(title, "#1f2328"), "size": 14}
    figure.update_layout(height=80 + height * lines, showlegend=False)
    cells = [{"row": i // columns + 1, "col": i % columns + 1} for i in range(len(titles))]
    return figure, cells


def history_figure(
    studies: Mapping[str, optuna.Study], colours: Mapping[str, str]
) -> go.Figure | None:
    """Each method's validation accuracy per complete trial and the best so far, one small
    multiple per method on a shared axis; None before any trial completed."""
    trials = {m: _complete(s) for m, s in studies.items()}
    trials = {m: t for m, t in trials.items() if t}
    if not trials:
        return None
    figure, cells = _small_multiples(list(trials), colours)
    for (method, done), cell in zip(trials.items(), cells, strict=True):
        numbers = [t.number for t in done]
        values = [100 * float(t.value or 0.0) for t in done]
        best = list(itertools.accumulate(values, max))
        colour = colours[method]
        figure.add_scatter(
            x=numbers,
            y=values,
            mode="markers",
            marker={"color": colour, "size": 7, "opacity": 0.75},
            name=method,
            legendgroup=method,
            hovertemplate="trial %{x}: %{y:.1f} %<extra>" + method + "</extra>",
            **cell,
        )
        figure.add_scatter(
            x=numbers,
            y=best,
            mode="lines",
            line={"color": colour, "shape": "hv", "width": 2},
            name=f"{method}: best so far",
            legendgroup=method,
            hoverinfo="skip",
            **cell,
        )
    numbers = [t.number for done in trials.values() for t in done]
    values = [100 * float(t.value or 0.0) for done in trials.values() for t in done]
    figure.update_xaxes(title_text="trial", **_whole_numbers(numbers))
    figure.update_yaxes(title_text=VALUE, col=1)
    figure.update_yaxes(range=tight_range(values, values))
    return figure


def _whole_numbers(values: Sequence[float]) -> dict[str, Any]:
    """Axis settings for trial numbers or epochs: whole ticks, about eight of them."""
    return {
        "tick0": 0,
        "dtick": max(1, math.ceil(max(values, default=0) / 8)),
        "rangemode": "nonnegative",
    }


_TRIAL_NUMBER = re.compile(r"(\d+)$")


def learning_curves_figure(
    studies: Mapping[str, optuna.Study], colours: Mapping[str, str]
) -> go.Figure | None:
    """Validation accuracy per epoch of every trial that reported one, pruned trials dotted:
    Optuna's ``plot_intermediate_values``, one small multiple per method in its colour; None
    when no trial reported an epoch."""
    curves: dict[str, tuple[go.Figure, dict[int, TrialState]]] = {}
    for method, study in studies.items():
        trials = study.get_trials(deepcopy=False)
        if any(t.intermediate_values for t in trials):
            states = {t.number: t.state for t in trials}
            curves[method] = (optuna.visualization.plot_intermediate_values(study), states)
    if not curves:
        return None
    figure, cells = _small_multiples(list(curves), colours)
    for (method, (drawn, states)), cell in zip(curves.items(), cells, strict=True):
        for trace in drawn.data:
            found = _TRIAL_NUMBER.search(str(trace.name))
            number = int(found.group(1)) if found else -1
            pruned = states.get(number) == TrialState.PRUNED
            figure.add_scatter(
                x=trace.x,
                y=[100 * y for y in trace.y],
                mode="lines",
                line={"color": colours[method], "width": 1.5, "dash": "dot" if pruned else None},
                opacity=0.7,
                name=f"{method} trial {number}",
                legendgroup=method,
                hovertemplate=f"trial {number}{' (pruned)' if pruned else ''}, "
                "epoch %{x}: %{y:.1f} %<extra>" + method + "</extra>",
                **cell,
            )
    epochs = [x for drawn, _ in curves.values() for trace in drawn.data for x in trace.x]
    values = [100 * y for drawn, _ in curves.values() for trace in drawn.data for y in trace.y]
    figure.update_xaxes(title_text="epoch", **_whole_numbers(epochs))
    figure.update_yaxes(title_text=VALUE, col=1)
    figure.update_yaxes(range=tight_range(values, values))
    return figure


def timeline_figure(
    studies: Mapping[str, optuna.Study], colours: Mapping[str, str]
) -> go.Figure | None:
    """When each trial ran, one line per trial: Optuna's ``plot_timeline`` of every study in
    one figure, bars in their method's colour, the state as the fill (solid: complete, ``/``:
    pruned, ``x``: failed). Overlapping bars are trials that ran at once."""
    figure = go.Figure()
    order: list[str] = []
    for method, study in studies.items():
        trials = study.get_trials(deepcopy=False)
        if not trials:
            continue
        order += [f"{method} #{t.number}" for t in trials]
        for trace in optuna.visualization.plot_timeline(study).data:
            state = str(trace.name)
            figure.add_bar(
                x=trace.x,
                y=[f"{method} #{n}" for n in trace.y],
                base=trace.base,
                orientation="h",
                text=trace.text,
                textposition="none",
                hovertemplate="%{text}<extra>" + f"{method}: {state.lower()}</extra>",
                marker={
                    "color": colours[method],
                    "pattern": {"shape": STATE_PATTERNS.get(state, "")},
                    "line": {"color": colours[method], "width": 1},
                },
                name=f"{method}: {state.lower()}",
                legendgroup=method,
            )
    if not order:
        return None
    figure.update_xaxes(type="date", title_text="time")
    figure.update_yaxes(categoryorder="array", categoryarray=order[::-1], title_text="trial")
    figure.update_layout(height=min(1600, max(300, 120 + 18 * len(order))), bargap=0.25)
    return figure


def edf_figure(
    studies: Mapping[str, optuna.Study], colours: Mapping[str, str]
) -> go.Figure | None:
    """The share of each method's complete trials at or below each validation accuracy:
    Optuna's ``plot_edf`` of all the studies, one line per method; a line further right is a
    method whose trials do better, whichever the sampler picked. None without a complete
    trial."""
    done = {m: s for m, s in studies.items() if _complete(s)}
    if not done:
        return None
    figure = optuna.visualization.plot_edf(
        list(done.values()), target=lambda t: 100 * float(t.value or 0.0), target_name=VALUE
    )
    methods = {s.study_name: m for m, s in done.items()}
    for trace in figure.data:
        method = methods[str(trace.name)]
        trace.update(
            name=method, legendgroup=method, line={"color": colours[method], "width": 2.5}
        )
    figure.update_layout(yaxis_title="share of complete trials", height=420)
    return figure


def _log_scale(trials: Sequence[FrozenTrial], param: str) -> bool:
    distributions = [t.distributions[param] for t in trials if param in t.distributions]
    return bool(distributions) and all(getattr(d, "log", False) for d in distributions)


def _log_ticks(values: Sequence[float], count: int = 5) -> dict[str, Any]:
    """About ``count`` ticks for a log axis over ``values``, evenly spaced on it and rounded
    to two digits (plotly's own crowd a range of less than a decade).

    Example:
        >>> _log_ticks([0.05, 0.2, 1.0])["ticktext"]
        ['0.05', '0.11', '0.22', '0.47', '1']
    """
    low, high = min(values), max(values)
    if low <= 0 or high <= low:
        return {}
    steps = [low * (high / low) ** (i / (count - 1)) for i in range(count)]
    ticks = sorted({float(f"{step:.2g}") for step in steps})
    return {"tickvals": ticks, "ticktext": [f"{t:g}" for t in ticks]}


def params_figure(
    studies: Mapping[str, optuna.Study], colours: Mapping[str, str]
) -> go.Figure | None:
    """Validation accuracy against each searched parameter, one small multiple per parameter
    (log axis where it was searched on one), every method that searched it in its colour;
    None where nothing was searched."""
    trials = {m: _complete(s) for m, s in studies.items()}
    params = list(dict.fromkeys(p for done in trials.values() for t in done for p in t.params))
    if not params:
        return None
    figure, cells = _small_multiples(params)
    for param, cell in zip(params, cells, strict=True):
        for method, done in trials.items():
            having = [t for t in done if param in t.params]
            if not having:
                continue
            categorical = isinstance(having[0].distributions[param], CategoricalDistribution)
            figure.add_scatter(
                x=[str(t.params[param]) if categorical else t.params[param] for t in having],
                y=[100 * float(t.value or 0.0) for t in having],
                mode="markers",
                marker={"color": colours[method], "size": 8, "opacity": 0.8},
                name=method,
                legendgroup=method,
                hovertemplate=f"{param} = %{{x:.4g}}: %{{y:.1f}} %<extra>{method}</extra>",
                **cell,
            )
        searched = [t for done in trials.values() for t in done if param in t.params]
        if _log_scale(searched, param):
            ticks = _log_ticks([float(t.params[param]) for t in searched])
            figure.update_xaxes(type="log", **ticks, **cell)
    values = [100 * float(t.value or 0.0) for done in trials.values() for t in done]
    figure.update_yaxes(title_text=VALUE, col=1)
    figure.update_yaxes(range=tight_range(values, values))
    figure.update_layout(showlegend=True)
    _one_legend_entry_per_method(figure)
    return figure


def distances_figure(
    studies: Mapping[str, optuna.Study], colours: Mapping[str, str]
) -> go.Figure | None:
    """How far each method's best trial moved every layer group from the pretrained weights
    (the largest MARS distance in the group, log axis); None without a best trial."""
    figure = go.Figure()
    for method, study in studies.items():
        best = best_trial(study)
        distances = {} if best is None else best.user_attrs.get("distances", {})
        if distances:
            figure.add_scatter(
                x=list(distances),
                y=list(distances.values()),
                mode="lines+markers",
                line={"color": colours[method], "width": 2},
                marker={"size": 8},
                name=method,
                legendgroup=method,
            )
    if not figure.data:
        return None
    figure.update_layout(
        xaxis_title="layer group", yaxis_title="largest MARS distance", yaxis_type="log"
    )
    figure.update_yaxes(**_log_ticks([y for trace in figure.data for y in trace.y]))
    return figure


def importance_figure(
    studies: Mapping[str, optuna.Study], colours: Mapping[str, str]
) -> tuple[go.Figure | None, list[str]]:
    """Optuna's ``plot_param_importances`` of each study with two or more searched
    parameters and :data:`MIN_IMPORTANCE_TRIALS` complete trials, one small multiple each;
    and a line for each reason a study was left out."""
    backed: dict[str, go.Figure] = {}
    short: list[str] = []
    notes: list[str] = []
    for method, study in studies.items():
        done = _complete(study)
        if len({p for t in done for p in t.params}) < 2:
            continue  # one parameter has all the importance; none has none
        if len(done) < MIN_IMPORTANCE_TRIALS:
            short.append(f"{method} ({len(done)})")
            continue
        try:
            backed[method] = optuna.visualization.plot_param_importances(
                study, target_name=METRIC_NAMES[0]
            )
        except (RuntimeError, ValueError) as error:  # e.g. every trial has the same value
            notes.append(f"Parameter importance of {method} could not be computed: {error}")
    if short:
        notes.insert(
            0,
            f"Parameter importance is left out for {', '.join(short)}: it takes "
            f"{MIN_IMPORTANCE_TRIALS} complete trials to rank parameters, and these have fewer.",
        )
    if not backed:
        return None, notes
    ranked = max(len(trace.y) for drawn in backed.values() for trace in drawn.data)
    figure, cells = _small_multiples(list(backed), colours, height=80 + 30 * ranked, shared=False)
    for (method, drawn), cell in zip(backed.items(), cells, strict=True):
        for trace in drawn.data:
            figure.add_bar(
                x=trace.x,
                y=trace.y,
                orientation="h",
                marker={"color": colours[method]},
                name=method,
                legendgroup=method,
                hovertemplate="%{y}: %{x:.2f}<extra>" + method + "</extra>",
                **cell,
            )
    figure.update_xaxes(title_text="importance", range=[0, 1])
    return figure, notes


def search_section(
    spec: StudySpec, studies: Mapping[str, optuna.Study], colours: Mapping[str, str]
) -> Section:
    """The figures of one search: its studies, one per method."""
    importance, notes = importance_figure(studies, colours)
    candidates = [
        (
            "history",
            "Optimisation history of each method",
            "Dots: validation accuracy of each complete trial; line: the best so far.",
            history_figure(studies, colours),
        ),
        (
            "curves",
            "Learning curves of every trial",
            "Validation accuracy after each epoch, as the pruner saw it; dotted: pruned trials.",
            learning_curves_figure(studies, colours),
        ),
        (
            "timeline",
            "Timeline of the trials",
            "One bar per trial from its start to its end; solid: complete, hatched: pruned, "
            "crossed: failed. Bars side by side in time ran at once, on different slots.",
            timeline_figure(studies, colours),
        ),
        (
            "edf",
            "Distribution of validation accuracy per method",
            "The share of a method's complete trials at or below each accuracy: further right "
            "is better, and a steep line is a method that depends little on its parameters.",
            edf_figure(studies, colours),
        ),
        (
            "params",
            "Validation accuracy against each searched parameter",
            "One panel per parameter, every method that searched it in its colour.",
            params_figure(studies, colours),
        ),
        (
            "distances",
            "Distance moved from the pretrained weights",
            "The largest MARS distance in each layer group, for the best trial of each method.",
            distances_figure(studies, colours),
        ),
        (
            "importance",
            "Parameter importance",
            "Optuna's default importance evaluator, per method with enough trials.",
            importance,
        ),
    ]
    plots = [Plot(n, t, c, _styled(f)) for n, t, c, f in candidates if f is not None]
    missing = [] if studies else [f"No study of {spec.name} is in the storage."]
    return Section(f"Search: {spec.name}", plots, missing + notes)


def _styled(figure: go.Figure) -> go.Figure:
    """One look for every figure: a white template, the page's font, no title (the page
    gives one), a legend on the right."""
    figure.update_layout(
        template="plotly_white",
        title=None,
        font={"family": "system-ui, -apple-system, Segoe UI, Roboto, Arial", "size": 13},
        margin={"l": 60, "r": 20, "t": 40, "b": 50},
        legend={"title": {"text": "method"}},
    )
    return figure


def sections(
    specs: Sequence[StudySpec],
    storage: optuna.storages.BaseStorage,
    rows: Sequence[Row],
    colours: Mapping[str, str],
) -> list[Section]:
    """The comparison across searches, then one section per search (spec)."""
    across = [
        name
        for name, varies in (
            ("conditions", len({s.condition for s in specs}) > 1),
            ("repeated searches", len({s.repeat for s in specs}) > 1),
        )
        if varies
    ]
    heading = " ".join(["Comparison", *(["across", " and ".join(across)] if across else [])])
    found = find_studies(specs, storage)
    with warnings.catch_warnings():  # some of optuna.visualization is experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return [Section(heading, overview(rows, colours))] + [
            search_section(
                spec, {m: s for sp, m, s in found if sp is spec and s is not None}, colours
            )
            for spec in specs
        ]


# --- the page -------------------------------------------------------------------------------


def _compact(value: Any) -> str:
    """A spec value on one line: a search range as ``[low, high] log``, a mapping as
    ``key=value, ...``, ``None`` left out.

    Example:
        >>> _compact({"radius": {"low": 0.05, "high": 1.0, "log": True}, "timeout": None})
        'radius=[0.05, 1] log'
    """
    if isinstance(value, Mapping):
        if {"low", "high"} <= value.keys():
            scale = " log" if value.get("log") else ""
            return f"[{_compact(value['low'])}, {_compact(value['high'])}]{scale}"
        inner = ", ".join(
            f"{k}={_nested(v)}" for k, v in value.items() if v is not None and v != {}
        )
        return inner or "-"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_nested(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _nested(value: Any) -> str:
    if isinstance(value, Mapping) and not {"low", "high"} <= value.keys():
        return "{" + _compact(value) + "}"
    return _compact(value)


def _flat(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested ``set:`` overrides as dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _versions(studies: Iterable[optuna.Study]) -> str:
    """The versions the trials ran with (each package's, every value seen)."""
    seen: dict[str, set[str]] = {}
    for study in studies:
        for trial in study.get_trials(deepcopy=False):
            for package, version in dict(trial.user_attrs.get("versions", {})).items():
                seen.setdefault(str(package), set()).add(str(version))
    return ", ".join(f"{p} {'/'.join(sorted(v))}" for p, v in seen.items()) or "-"


def _installed(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _when(studies: Sequence[optuna.Study]) -> str:
    """From the first trial's start to the last trial's end, as the storage records them."""
    trials = [t for s in studies for t in s.get_trials(deepcopy=False)]
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    ends = [t.datetime_complete for t in trials if t.datetime_complete is not None]
    if not starts or not ends:
        return "-"
    first, last = min(starts), max(ends)
    return f"{first:%Y-%m-%d %H:%M} to {last:%H:%M}" + (
        "" if last.date() == first.date() else f" on {last:%Y-%m-%d}"
    )


def _item(term: str, value: str) -> str:
    return f"<dt>{html.escape(term)}</dt><dd>{value}</dd>"


def setup_html(
    specs: Sequence[StudySpec],
    storage: optuna.storages.BaseStorage,
    colours: Mapping[str, str],
    *,
    now: datetime.datetime | None = None,
) -> str:
    """The spec, the storage (password masked), the dates and the versions, as a ``<dl>``,
    and the whole spec as stored on the studies (JSON) under a closed ``<details>``."""
    first = specs[0]
    studies = [s for _, _, s in find_studies(specs, storage) if s is not None]
    shared = _flat(first.set)
    for spec in specs[1:]:
        shared = {k: v for k, v in shared.items() if _flat(spec.set).get(k) == v}
    conditions = {
        s.condition: {k: v for k, v in _flat(s.set).items() if shared.get(k, object()) != v}
        for s in specs
        if s.condition is not None
    }
    methods = "".join(
        f"<li>{_swatch(colours[m])}<b>{html.escape(m)}</b>: "
        f"{html.escape(_compact(space.to_data()))}</li>"
        for m, space in first.methods.items()
    )
    report = [
        f"tether {__version__}",
        f"optuna {optuna.__version__}",
        f"plotly {plotly.__version__}",
        *(f"{p} {v}" for p in ("torch", "optuna-dashboard") if (v := _installed(p))),
    ]
    written = (now or datetime.datetime.now(datetime.UTC)).strftime("%Y-%m-%d %H:%M UTC")
    items = [
        _item("spec", f"<code>{html.escape(first.family)}</code>"),
        _item("recipe", f"<code>{html.escape(first.recipe)}</code>"),
        _item("set", html.escape(_compact(shared))),
        *(
            [
                _item(
                    "conditions",
                    html.escape("; ".join(f"{c}: {_compact(s)}" for c, s in conditions.items())),
                )
            ]
            if conditions
            else []
        ),
        _item("methods", f"<ul>{methods}</ul>"),
        _item("budget", html.escape(_compact(first.to_dict()["budget"]))),
        _item("sampler", html.escape(_compact(first.to_dict()["sampler"]))),
        _item("pruner", html.escape(_compact(first.to_dict()["pruner"]))),
        _item("evaluation", html.escape(_compact(first.to_dict()["evaluation"]))),
        _item("storage", f"<code>{html.escape(storage_url(storage))}</code>"),
        _item("trials ran", html.escape(_when(studies))),
        _item("written", html.escape(written)),
        _item("search ran with", html.escape(_versions(studies))),
        _item("report written with", html.escape(", ".join(report))),
    ]
    spec_json = html.escape(json.dumps(first.to_dict(), indent=2), quote=False)
    return (
        f'<dl class="setup">{"".join(items)}</dl>\n'
        f"<details><summary>The spec as stored on the studies of {html.escape(first.name)}"
        f"</summary><pre>{spec_json}</pre></details>"
    )


def _swatch(colour: str) -> str:
    return f'<span class="swatch" style="background:{colour}"></span>'


def table_html(rows: Sequence[Row], colours: Mapping[str, str]) -> str:
    """The comparison table (:func:`~tether.search.results.compare.as_html`), each method's
    name marked with its colour."""
    table = as_html(rows)
    for method, colour in colours.items():
        name = html.escape(method)
        table = table.replace(f"<td>{name}</td>", f"<td>{_swatch(colour)}{name}</td>")
    return table


def _figure_html(plot: Plot, div_id: str) -> str:
    chart = plot.figure.to_html(
        full_html=False, include_plotlyjs=False, div_id=div_id, config=CONFIG
    )
    return (
        f'<figure class="plot" data-figure="{html.escape(plot.name)}">'
        f"<h3>{html.escape(plot.title)}</h3>{chart}"
        f"<figcaption>{html.escape(plot.caption)}</figcaption></figure>"
    )


TABLE_NOTE = (
    "Test %: mean +- standard deviation over the evaluation seeds, then the 95 % Student-t "
    "interval of the mean; vs the baseline: the difference paired by seed, with its interval. "
    "The same table as tether compare."
)


def page_html(
    title: str, table: str, setup: str, parts: Sequence[Section], *, plotly_js: str
) -> str:
    """The whole page: the table first, the setup, then each section's figures."""
    body = [
        f"<header><h1>{html.escape(title)}</h1></header>",
        f'<section><div class="table-wrap">{table}</div>'
        f'<p class="note">{html.escape(TABLE_NOTE)}</p></section>',
        f"<section><details open><summary>Setup: spec, storage, dates, versions</summary>"
        f"{setup}</details></section>",
    ]
    for number, section in enumerate(parts):
        notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in section.notes)
        figures = "\n".join(
            _figure_html(plot, f"figure-{number}-{plot.name}") for plot in section.plots
        )
        body.append(
            f"<section><h2>{html.escape(section.heading)}</h2>\n{figures}\n{notes}</section>"
        )
    content = "\n".join(body)
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style>"
        f"<script>{plotly_js}</script></head>\n<body><main>\n{content}\n</main></body></html>\n"
    )


def write_report(
    specs: StudySpec | Sequence[StudySpec],
    storage: optuna.storages.BaseStorage,
    path: Path,
    *,
    baseline: str | None = None,
) -> Path:
    """Write the report to ``path`` (plotly.js inlined once: the file opens offline).

    The table pairs every method with ``baseline`` (None: no pairing). Several specs (the
    conditions and repeats of one spec file) share the table and the comparison figures, one
    facet each, then get one section each.

    Raises:
        ValueError: ``baseline`` is not a method of the specs.
    """
    specs = [specs] if isinstance(specs, StudySpec) else list(specs)
    rows = collect(specs, storage, baseline=baseline)
    colours = method_colours(specs)
    name = specs[0].name if len(specs) == 1 else specs[0].family
    page = page_html(
        f"Tether report: {name}",
        table_html(rows, colours),
        setup_html(specs, storage, colours),
        sections(specs, storage, rows, colours),
        plotly_js=plotly.offline.get_plotlyjs(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
