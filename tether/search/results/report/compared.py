"""The methods compared: the figures of the comparison table's rows, one facet per
condition and repeat of the search (never overlaid).

Test accuracy, mean and 95 % interval over the evaluation seeds, on an axis that spans the
values rather than one from zero; the difference to the baseline paired by seed; test
accuracy against the device-hours of search and evaluation; with conditions, each method's
test accuracy across them (:func:`overview` lists them in page order).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tether.search.results.compare import Row
from tether.search.results.compare import across_searches
from tether.search.results.report._common import Plot
from tether.search.results.report._common import one_legend_entry_per_method
from tether.search.results.report._common import styled
from tether.search.results.report._common import tight_range


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


def _interval_bars(points: Sequence[tuple[float, float, float]]) -> dict[str, Any]:
    return {
        "type": "data",
        "symmetric": False,
        "array": [high - mean for mean, _, high in points],
        "arrayminus": [mean - low for mean, low, _ in points],
        "thickness": 2,
        "width": 6,
    }


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
    one_legend_entry_per_method(figure)
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
    one_legend_entry_per_method(figure)
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
    return [Plot(n, t, c, styled(f)) for n, t, c, f in candidates if f is not None]
