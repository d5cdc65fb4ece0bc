"""One search's figures: the studies of one spec, one per method, Tether's figures beside
the ones Optuna draws (``optuna.visualization``).

Each method's history as small multiples; the learning curves of every trial, pruned ones
too (``plot_intermediate_values``); the trials' timeline (``plot_timeline``); the
distribution of each method's values (``plot_edf``); validation accuracy against each
searched parameter; the distance profile of each method's best trial; parameter importance
(``plot_param_importances``) for the studies with :data:`MIN_IMPORTANCE_TRIALS` complete
trials, a line saying why for the others (:func:`search_section` lists them in page order).
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
import itertools
import math
import re
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial
from optuna.trial import TrialState
import optuna.visualization
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tether.search.execution.studies import METRIC_NAMES
from tether.search.execution.studies import best_trial
from tether.search.results.report._common import Plot
from tether.search.results.report._common import Section
from tether.search.results.report._common import one_legend_entry_per_method
from tether.search.results.report._common import styled
from tether.search.results.report._common import tight_range
from tether.search.spec import StudySpec


MIN_IMPORTANCE_TRIALS = 20
"""Complete trials a study needs before its parameter importance is drawn."""

VALUE = f"{METRIC_NAMES[0]} (%)"
STATE_PATTERNS = {"COMPLETE": "", "PRUNED": "/", "FAIL": "x", "RUNNING": ".", "WAITING": "-"}
"""How the timeline tells a trial's state: the fill pattern (its colour is its method's)."""


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
    one_legend_entry_per_method(figure)
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
    plots = [Plot(n, t, c, styled(f)) for n, t, c, f in candidates if f is not None]
    missing = [] if studies else [f"No study of {spec.name} is in the storage."]
    return Section(f"Search: {spec.name}", plots, missing + notes)
