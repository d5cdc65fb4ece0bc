"""One self-contained HTML file of plotly figures for a spec's studies.

1. the methods side by side: test accuracy, mean +- std over the evaluation seeds;
2. optimisation history of each method (validation accuracy per trial, best so far);
3. validation accuracy against each searched radius / weight (log axes);
4. the per-layer distance profile: how far each method's best trial moved every layer group;
5. parameter importance per method (Optuna's default evaluator), where there are enough trials.
"""

from __future__ import annotations

from collections.abc import Sequence
import html
from pathlib import Path

import optuna
from optuna.trial import TrialState
import plotly.graph_objects as go

from tether.search.execution.studies import best_trial
from tether.search.execution.studies import find_studies
from tether.search.results.compare import collect
from tether.search.spec import StudySpec


def _studies(spec: StudySpec, storage: optuna.storages.BaseStorage) -> dict[str, optuna.Study]:
    return {m: s for _, m, s in find_studies([spec], storage) if s is not None}


def _comparison(spec: StudySpec, storage: optuna.storages.BaseStorage) -> go.Figure:
    rows = [r for r in collect(spec, storage) if r.test_mean is not None]
    figure = go.Figure(
        go.Bar(
            x=[r.method for r in rows],
            y=[100 * (r.test_mean or 0.0) for r in rows],
            error_y={"type": "data", "array": [100 * (r.test_std or 0.0) for r in rows]},
        )
    )
    figure.update_layout(
        title="Test accuracy of each method's best configuration (mean +- std over seeds)",
        yaxis_title="test accuracy (%)",
    )
    return figure


def _history(studies: dict[str, optuna.Study]) -> go.Figure:
    figure = go.Figure()
    for method, study in studies.items():
        trials = sorted(
            study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
            key=lambda t: t.number,
        )
        values = [100 * (t.value or 0.0) for t in trials]
        best = [max(values[: i + 1]) for i in range(len(values))]
        figure.add_scatter(
            x=[t.number for t in trials], y=values, mode="markers", name=f"{method}"
        )
        figure.add_scatter(
            x=[t.number for t in trials], y=best, mode="lines", name=f"{method} (best)"
        )
    figure.update_layout(
        title="Optimisation history", xaxis_title="trial", yaxis_title="val accuracy (%)"
    )
    return figure


def _against_params(studies: dict[str, optuna.Study]) -> go.Figure:
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
                    name=f"{method}: {param}",
                )
    figure.update_layout(
        title="Validation accuracy against each searched radius or weight",
        xaxis_type="log",
        xaxis_title="value",
        yaxis_title="val accuracy (%)",
    )
    return figure


def _distances(studies: dict[str, optuna.Study]) -> go.Figure:
    figure = go.Figure()
    for method, study in studies.items():
        best = best_trial(study)
        if best is None:
            continue
        distances = best.user_attrs.get("distances", {})
        figure.add_scatter(
            x=list(distances), y=list(distances.values()), mode="lines+markers", name=method
        )
    figure.update_layout(
        title="Distance moved from the pretrained weights by each method's best trial",
        xaxis_title="layer group",
        yaxis_title="largest MARS distance",
        yaxis_type="log",
    )
    return figure


def _importance(studies: dict[str, optuna.Study]) -> go.Figure | None:
    bars = []
    for method, study in studies.items():
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(complete) < 4 or len({p for t in complete for p in t.params}) < 2:
            continue
        try:
            importances = optuna.importance.get_param_importances(study)
        except (RuntimeError, ValueError):
            continue
        bars.append(go.Bar(name=method, x=list(importances), y=list(importances.values())))
    if not bars:
        return None
    figure = go.Figure(bars)
    figure.update_layout(title="Parameter importance", barmode="group", yaxis_title="importance")
    return figure


def _by_condition(specs: Sequence[StudySpec], storage: optuna.storages.BaseStorage) -> go.Figure:
    """Each method's test accuracy across the conditions of a spec (e.g. noise rates)."""
    figure = go.Figure()
    by_method: dict[str, list[tuple[str, float, float]]] = {}
    for spec in specs:
        for row in collect(spec, storage):
            if row.test_mean is not None:
                point = (spec.condition or spec.name, row.test_mean, row.test_std or 0.0)
                by_method.setdefault(row.method, []).append(point)
    for method, points in by_method.items():
        figure.add_scatter(
            x=[p[0] for p in points],
            y=[100 * p[1] for p in points],
            error_y={"type": "data", "array": [100 * p[2] for p in points]},
            mode="lines+markers",
            name=method,
        )
    figure.update_layout(
        title="Test accuracy per condition (mean +- std over seeds)",
        xaxis_title="condition",
        yaxis_title="test accuracy (%)",
    )
    return figure


def _figures(spec: StudySpec, storage: optuna.storages.BaseStorage) -> list[go.Figure]:
    studies = _studies(spec, storage)
    figures = [
        _comparison(spec, storage),
        _history(studies),
        _against_params(studies),
        _distances(studies),
    ]
    importance = _importance(studies)
    if importance is not None:
        figures.append(importance)
    return figures


def write_report(
    specs: StudySpec | Sequence[StudySpec], storage: optuna.storages.BaseStorage, path: Path
) -> Path:
    """Write the report to ``path`` (plotly.js inlined once: the file opens offline).

    Several specs (the conditions of one spec file) get one section each, after a figure
    that follows every method across the conditions.
    """
    specs = [specs] if isinstance(specs, StudySpec) else list(specs)
    sections: list[tuple[str, list[go.Figure]]] = []
    if len(specs) > 1:
        sections.append(("All conditions", [_by_condition(specs, storage)]))
    sections += [(spec.name, _figures(spec, storage)) for spec in specs]
    parts = []
    first = True
    for heading, figures in sections:
        html_parts = []
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
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
        f"<body><h1>{title}</h1>\n{body}\n</body></html>\n",
        encoding="utf-8",
    )
    return path
