"""What every figure of the report shares: one colour per method, the records of a figure
and of a section, the axis range that spans the values, one legend entry per method and one
look."""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
import itertools

import plotly.colors
import plotly.graph_objects as go

from tether.search.spec import StudySpec


PALETTE = (*plotly.colors.qualitative.T10, *plotly.colors.qualitative.Dark24)
"""The methods' colours: Tableau 10, then plotly's Dark 24 (34 distinct colours)."""


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


def one_legend_entry_per_method(figure: go.Figure) -> None:
    """Show each legend group once (a method appears in every facet)."""
    seen: set[str] = set()
    for trace in figure.data:
        trace.showlegend = trace.legendgroup not in seen
        seen.add(trace.legendgroup)


def styled(figure: go.Figure) -> go.Figure:
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
