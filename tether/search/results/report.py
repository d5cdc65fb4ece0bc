"""One self-contained HTML file: the comparison table and plotly figures for a spec's studies.

At the top, for every condition together:

1. the comparison table of :mod:`~tether.search.results.compare`, with its 95 % intervals and
   the paired differences to the baseline;
2. cost against quality: each method's test accuracy (mean, 95 % interval over the evaluation
   seeds) against the device-hours of its search and evaluation, one point per method and
   condition, so a method that needs one run shows how much cheaper it is, and at what price;
3. with conditions: each method's test accuracy across them (with repeated searches, the mean
   and standard deviation over the searches).

Then for each spec (each condition, each repeat of a search):

4. the methods side by side: test accuracy, mean +- std over the evaluation seeds;
5. optimisation history of each method (validation accuracy per trial, best so far);
6. validation accuracy against each searched radius / weight (log axes);
7. the per-layer distance profile: how far each method's best trial moved every layer group;
8. parameter importance per method (Optuna's default evaluator), where there are enough trials.

A method has one colour in every figure.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
import html
import itertools
from pathlib import Path

import optuna
from optuna.trial import TrialState
import plotly.colors
import plotly.graph_objects as go

from tether.search.execution.studies import best_trial
from tether.search.execution.studies import find_studies
from tether.search.results.compare import Row
from tether.search.results.compare import across_searches
from tether.search.results.compare import as_html
from tether.search.results.compare import collect
from tether.search.spec import StudySpec


STYLE = "table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:2px 8px}"


def _studies(spec: StudySpec, storage: optuna.storages.BaseStorage) -> dict[str, optuna.Study]:
    return {m: s for _, m, s in find_studies([spec], storage) if s is not None}


def method_colours(specs: Sequence[StudySpec]) -> dict[str, str]:
    """One plotly colour per method of ``specs``, in the order the specs list them."""
    methods = dict.fromkeys(m for spec in specs for m in spec.methods)
    palette = itertools.cycle(plotly.colors.qualitative.Plotly)
    return dict(zip(methods, palette, strict=False))


def _evaluated(rows: Sequence[Row]) -> list[Row]:
    return [r for r in rows if r.test_mean is not None]


def _half_width(row: Row) -> float:
    """Half the 95 % interval of the test mean, in points (0 without an interval)."""
    if row.test_ci_low is None or row.test_ci_high is None:
        return 0.0
    return 50 * (row.test_ci_high - row.test_ci_low)


def _where(row: Row) -> str:
    """The condition and repeat of a row's search, e.g. ``noise20 r1`` (empty: neither)."""
    repeat = f"r{row.repeat}" if row.repeat else ""
    return " ".join(part for part in (row.condition or "", repeat) if part)


def cost_quality_figure(rows: Sequence[Row], colours: Mapping[str, str]) -> go.Figure:
    """Test accuracy (mean, 95 % interval as error bars) against the device-hours of search and
    evaluation: one trace per method in its colour, one point per condition and repeat."""
    figure = go.Figure()
    for method, colour in colours.items():
        points = [r for r in _evaluated(rows) if r.method == method]
        if not points:
            continue
        figure.add_scatter(
            x=[r.hours for r in points],
            y=[100 * (r.test_mean or 0.0) for r in points],
            error_y={"type": "data", "array": [_half_width(r) for r in points]},
            text=[_where(r) for r in points],
            mode="markers+text",
            textposition="top center",
            marker={"color": colour, "size": 10},
            name=method,
        )
    figure.update_layout(
        title="Test accuracy (mean, 95 % interval over seeds) against compute "
        "(search + evaluation)",
        xaxis_title="device-hours",
        yaxis_title="test accuracy (%)",
    )
    return figure


def _comparison(rows: Sequence[Row], colours: Mapping[str, str]) -> go.Figure:
    rows = _evaluated(rows)
    figure = go.Figure(
        go.Bar(
            x=[r.method for r in rows],
            y=[100 * (r.test_mean or 0.0) for r in rows],
            error_y={"type": "data", "array": [100 * (r.test_std or 0.0) for r in rows]},
            marker_color=[colours[r.method] for r in rows],
        )
    )
    figure.update_layout(
        title="Test accuracy of each method's best configuration (mean +- std over seeds)",
        yaxis_title="test accuracy (%)",
    )
    return figure


def _history(studies: dict[str, optuna.Study], colours: Mapping[str, str]) -> go.Figure:
    figure = go.Figure()
    for method, study in studies.items():
        trials = sorted(
            study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
            key=lambda t: t.number,
        )
        values = [100 * (t.value or 0.0) for t in trials]
        best = [max(values[: i + 1]) for i in range(len(values))]
        numbers = [t.number for t in trials]
        line = {"color": colours[method]}
        figure.add_scatter(x=numbers, y=values, mode="markers", marker=line, name=method)
        figure.add_scatter(x=numbers, y=best, mode="lines", line=line, name=f"{method} (best)")
    figure.update_layout(
        title="Optimisation history", xaxis_title="trial", yaxis_title="val accuracy (%)"
    )
    return figure


def _against_params(studies: dict[str, optuna.Study], colours: Mapping[str, str]) -> go.Figure:
    figure = go.Figure()
    for method, study in studies.items():
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        for param in sorted({p for t in trials for p in t.params}):
            points = [
                (t.params[param], 100 * (t.value or 0.0)) for t in trials if param in t.params
            ]
            if points and all(isinstance(x, float) and x > 0 for x, _ in points):
                figure.add_scatter(
                    x=[x for x, _ in points],
                    y=[y for _, y in points],
                    mode="markers",
                    marker={"color": colours[method]},
                    name=f"{method}: {param}",
                )
    figure.update_layout(
        title="Validation accuracy against each searched radius or weight",
        xaxis_type="log",
        xaxis_title="value",
        yaxis_title="val accuracy (%)",
    )
    return figure


def _distances(studies: dict[str, optuna.Study], colours: Mapping[str, str]) -> go.Figure:
    figure = go.Figure()
    for method, study in studies.items():
        best = best_trial(study)
        if best is None:
            continue
        distances = best.user_attrs.get("distances", {})
        figure.add_scatter(
            x=list(distances),
            y=list(distances.values()),
            mode="lines+markers",
            line={"color": colours[method]},
            name=method,
        )
    figure.update_layout(
        title="Distance moved from the pretrained weights by each method's best trial",
        xaxis_title="layer group",
        yaxis_title="largest MARS distance",
        yaxis_type="log",
    )
    return figure


def _importance(studies: dict[str, optuna.Study], colours: Mapping[str, str]) -> go.Figure | None:
    bars = []
    for method, study in studies.items():
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(complete) < 4 or len({p for t in complete for p in t.params}) < 2:
            continue
        try:
            importances = optuna.importance.get_param_importances(study)
        except (RuntimeError, ValueError):
            continue
        bars.append(
            go.Bar(
                name=method,
                x=list(importances),
                y=list(importances.values()),
                marker_color=colours[method],
            )
        )
    if not bars:
        return None
    figure = go.Figure(bars)
    figure.update_layout(title="Parameter importance", barmode="group", yaxis_title="importance")
    return figure


def _by_condition(rows: Sequence[Row], colours: Mapping[str, str]) -> go.Figure:
    """Each method's test accuracy across the conditions of a spec (e.g. noise rates); with
    repeated searches, the mean and spread over them (:func:`across_searches`)."""
    across = across_searches(rows)
    spread = "searches" if across else "seeds"
    figure = go.Figure()
    for method, colour in colours.items():
        points = [r for r in _evaluated(across or rows) if r.method == method]
        if not points:
            continue
        figure.add_scatter(
            x=[r.condition or "-" for r in points],
            y=[100 * (r.test_mean or 0.0) for r in points],
            error_y={"type": "data", "array": [100 * (r.test_std or 0.0) for r in points]},
            mode="lines+markers",
            line={"color": colour},
            name=method,
        )
    figure.update_layout(
        title=f"Test accuracy per condition (mean +- std over {spread})",
        xaxis_title="condition",
        yaxis_title="test accuracy (%)",
    )
    return figure


def _figures(
    spec: StudySpec,
    storage: optuna.storages.BaseStorage,
    rows: Sequence[Row],
    colours: Mapping[str, str],
) -> list[go.Figure]:
    """The figures of one spec (one condition's search); ``rows`` are every search's."""
    studies = _studies(spec, storage)
    mine = [r for r in rows if (r.condition, r.repeat) == (spec.condition, spec.repeat)]
    figures = [
        _comparison(mine, colours),
        _history(studies, colours),
        _against_params(studies, colours),
        _distances(studies, colours),
    ]
    importance = _importance(studies, colours)
    if importance is not None:
        figures.append(importance)
    return figures


def write_report(
    specs: StudySpec | Sequence[StudySpec],
    storage: optuna.storages.BaseStorage,
    path: Path,
    *,
    baseline: str | None = None,
) -> Path:
    """Write the report to ``path`` (plotly.js inlined once: the file opens offline).

    The table pairs every method with ``baseline`` (None: no pairing). Several specs (the
    conditions and repeats of one spec file) get one section each, after the table and the
    figures that cover them all.

    Raises:
        ValueError: ``baseline`` is not a method of the specs.
    """
    specs = [specs] if isinstance(specs, StudySpec) else list(specs)
    rows = collect(specs, storage, baseline=baseline)
    colours = method_colours(specs)
    overview = [cost_quality_figure(rows, colours)]
    if len({spec.condition for spec in specs}) > 1:
        overview.append(_by_condition(rows, colours))
    sections = [("All conditions", overview)]
    sections += [(spec.name, _figures(spec, storage, rows, colours)) for spec in specs]
    parts: list[str] = []
    first = True
    for heading, figures in sections:
        html_parts = [] if parts else [as_html(rows)]
        for figure in figures:
            html_parts.append(
                figure.to_html(full_html=False, include_plotlyjs="inline" if first else False)
            )
            first = False
        block = "\n".join(f"<section>{part}</section>" for part in html_parts)
        parts.append(f"<h2>{html.escape(heading)}</h2>\n{block}" if len(specs) > 1 else block)
    title = html.escape(f"Tether: {specs[0].name if len(specs) == 1 else specs[0].family}")
    body = "\n".join(parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{STYLE}</style></head><body><h1>{title}</h1>\n{body}\n</body></html>\n",
        encoding="utf-8",
    )
    return path
