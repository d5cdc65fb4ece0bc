"""The paper-style comparison table, read from the studies alone.

One row per method: trials (complete / pruned / failed); the configuration the row reports
(the trial the evaluation re-ran, else the search's best) with its validation accuracy; the
test accuracy of the evaluation, mean +- std over seeds and the 95 % Student-t interval of the
mean; the paired difference to a baseline method; and the compute spent, device-seconds of the
search and of the evaluation and where they ran. As text, markdown, CSV, JSON, LaTeX or HTML.

The difference to the baseline pairs the runs of one evaluation seed: a seed fixes the split,
the label noise and the initialisation, so ``d_s = a_s - b_s`` over the seeds ``s`` both
methods scored cancels what the seed alone explains, and its interval
``mean(d) +- t(0.975, n - 1) * sd(d) / sqrt(n)`` is the one that says whether the method beats
the baseline. A spec with ``conditions:`` (label-noise rates, say) gives one row per condition
and method, paired within its condition, and where self label-correction ran, the share of the
corrupted training labels it put right (mean over the evaluation seeds).

The seeds' interval says how sure the test accuracy of one search's winner is, not how much
the winner depends on the search: with a budget of a few trials, another sampler seed picks
another configuration. A spec with ``budget.repeats`` > 1 searched each method several times
(:func:`~tether.search.spec.repeats_of`); each repeat gets its rows, paired within the
repeat, with the configuration it chose, and :func:`across_searches` adds one row per
condition and method over the repeats: each repeat's test mean is one value, the interval is
over repeats, and the difference to the baseline pairs repeat ``r`` of the method with repeat
``r`` of the baseline.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
import csv
from dataclasses import dataclass
from dataclasses import fields
import html
import io
import json
import math
import statistics
from typing import Any

import optuna
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from tether.search.execution.studies import best_trial
from tether.search.execution.studies import find_studies
from tether.search.results.evaluate import EVALUATION_ATTR
from tether.search.space import format_params
from tether.search.spec import StudySpec


@dataclass(frozen=True)
class Row:
    """One method of one condition: its search, its evaluation and their cost.

    Accuracies are fractions; ``test_ci_*`` bound the 95 % interval of ``test_mean`` and
    ``diff_*`` are the paired difference (this method minus ``baseline``) and its interval,
    None where fewer than two seeds (one, for ``diff_mean``) give them. ``device`` lists the
    search's devices, ``eval_device`` the evaluation's. ``repeat`` is the search's number
    (0 without ``budget.repeats``).

    A row across searches (:func:`across_searches`) has ``repeat`` None and the same fields
    over the repeats instead of the seeds: ``searches`` repeats with a test mean are its
    values (a row of one search has ``searches`` 1), ``test_mean``, ``test_std`` and
    ``test_ci_*`` are their mean, standard deviation and interval, ``diff_*`` pair them by
    repeat; trials, ``seeds`` and seconds are totals, ``best_val`` and ``recovered`` means,
    ``best_trial`` None and ``best_params`` empty (each repeat's row has its own).
    """

    condition: str | None
    method: str
    complete: int
    pruned: int
    failed: int
    best_trial: int | None
    best_val: float | None
    test_mean: float | None
    test_std: float | None
    test_ci_low: float | None
    test_ci_high: float | None
    seeds: int
    baseline: str | None
    diff_mean: float | None
    diff_ci_low: float | None
    diff_ci_high: float | None
    recovered: float | None
    search_seconds: float
    eval_seconds: float
    device: str
    eval_device: str | None
    best_params: dict[str, object]
    repeat: int | None = 0
    searches: int = 1

    @property
    def hours(self) -> float:
        """The compute spent, search and evaluation together, in device-hours."""
        return (self.search_seconds + self.eval_seconds) / 3600


RECORD_FIELDS = (
    *(f.name for f in fields(Row) if f.name != "best_params"),
    "hours",
    "best_params",
)
"""A row's fields as CSV and JSON give them: ``hours`` (the total, the column that the two
``*_seconds`` replaced) before ``best_params``."""


def t_interval(values: Sequence[float]) -> tuple[float, float] | None:
    """The 95 % Student-t interval of the mean of ``values``, ``mean +- t(0.975, n - 1) *
    sd / sqrt(n)`` with the sample standard deviation; None under two values.

    Example:
        >>> low, high = t_interval([0.80, 0.82, 0.84])
        >>> round(low, 4), round(high, 4)
        (0.7703, 0.8697)
    """
    if len(values) < 2:
        return None
    # scipy.stats.t.ppf(0.975, n - 1); scipy.special imports in a third of the time
    from scipy.special import stdtrit

    mean = statistics.mean(values)
    quantile = float(stdtrit(len(values) - 1, 0.975))
    half = quantile * statistics.stdev(values) / math.sqrt(len(values))
    return mean - half, mean + half


def seed_scores(evaluation: Mapping[str, Any]) -> dict[int, float]:
    """Each evaluation seed's test accuracy (the ``tether:evaluation`` attribute of a study),
    the seeds whose run failed left out."""
    pairs = zip(evaluation.get("seeds", []), evaluation.get("test_accuracy", []), strict=True)
    return {int(seed): float(score) for seed, score in pairs if score is not None}


def paired_differences(scores: Mapping[int, float], reference: Mapping[int, float]) -> list[float]:
    """``scores[s] - reference[s]`` for each seed ``s`` both have, in seed order (or each
    repeat, for the means of searches).

    Example:
        >>> [round(d, 2) for d in paired_differences({0: 0.9, 1: 0.8, 2: 0.7}, {1: 0.7, 2: 0.8})]
        [0.1, -0.1]
    """
    return [scores[seed] - reference[seed] for seed in sorted(scores.keys() & reference.keys())]


def reported_trial(study: optuna.Study, evaluation: Mapping[str, Any]) -> FrozenTrial | None:
    """The trial a row reports: the one the evaluation re-ran, else the search's best (they
    differ only if the search went on after the evaluation)."""
    number = evaluation.get("best_trial")
    evaluated = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    return evaluated[0] if evaluated else best_trial(study)


def _bounds(interval: tuple[float, float] | None) -> tuple[float | None, float | None]:
    return (None, None) if interval is None else interval


def _row(
    spec: StudySpec,
    method: str,
    study: optuna.Study,
    baseline: str | None,
    reference: Mapping[int, float],
) -> Row:
    """The row of one study; ``reference`` holds the baseline's seed scores ({}: none)."""
    trials = study.get_trials(deepcopy=False)
    evaluation = study.user_attrs.get(EVALUATION_ATTR, {})
    scores = seed_scores(evaluation)
    chosen = reported_trial(study, evaluation)
    differences = [] if method == baseline else paired_differences(scores, reference)
    test_low, test_high = _bounds(t_interval(list(scores.values())))
    diff_low, diff_high = _bounds(t_interval(differences))
    devices = {str(t.user_attrs["device"]) for t in trials if "device" in t.user_attrs}
    return Row(
        condition=spec.condition,
        method=method,
        complete=sum(t.state == TrialState.COMPLETE for t in trials),
        pruned=sum(t.state == TrialState.PRUNED for t in trials),
        failed=sum(t.state == TrialState.FAIL for t in trials),
        best_trial=None if chosen is None else chosen.number,
        best_val=None if chosen is None else chosen.value,
        test_mean=evaluation.get("mean"),
        test_std=evaluation.get("std"),
        test_ci_low=test_low,
        test_ci_high=test_high,
        seeds=len(scores),
        baseline=baseline,
        diff_mean=statistics.mean(differences) if differences else None,
        diff_ci_low=diff_low,
        diff_ci_high=diff_high,
        recovered=evaluation.get("recovered_mean"),
        search_seconds=sum(float(t.user_attrs.get("seconds", 0.0)) for t in trials),
        eval_seconds=float(evaluation.get("seconds", 0.0)),
        device="/".join(sorted(devices)) or "-",
        eval_device=evaluation.get("device"),
        best_params={} if chosen is None else dict(chosen.params),
        repeat=spec.repeat,
    )


def collect(
    specs: StudySpec | Sequence[StudySpec],
    storage: optuna.storages.BaseStorage,
    *,
    baseline: str | None = None,
) -> list[Row]:
    """One row per condition and method of ``specs`` that has a study in ``storage``, each
    paired with ``baseline`` (a method of the specs) within its condition; None: no pairing.

    Raises:
        ValueError: ``baseline`` is not a method of the specs.
    """
    specs = [specs] if isinstance(specs, StudySpec) else list(specs)
    for spec in specs:
        if baseline is not None and baseline not in spec.methods:
            raise ValueError(
                f"baseline must be a method of spec {spec.name} "
                f"({', '.join(spec.methods)}), got {baseline!r}"
            )
    rows = []
    for spec in specs:
        studies = {m: s for _, m, s in find_studies([spec], storage) if s is not None}
        base = studies.get(baseline) if baseline is not None else None
        reference = {} if base is None else seed_scores(base.user_attrs.get(EVALUATION_ATTR, {}))
        rows += [_row(spec, m, s, baseline, reference) for m, s in studies.items()]
    return rows


def across_searches(rows: Sequence[Row]) -> list[Row]:
    """One row per condition and method over its repeated searches (see :class:`Row`), where
    ``rows`` (as :func:`collect` gives them) hold more than one search; else none.

    A search's value is its row's test mean over the evaluation seeds. Every repeat is
    evaluated on the same seeds, so what spreads these values is the configuration each
    search chose. The difference to the baseline is ``d_r = mean_r(method) -
    mean_r(baseline)`` over the repeats ``r`` both have a mean for, with the t interval of
    its mean over those repeats.
    """
    if not any(r.repeat for r in rows):
        return []
    groups: dict[tuple[str | None, str], list[Row]] = {}
    for row in rows:
        if row.repeat is not None:
            groups.setdefault((row.condition, row.method), []).append(row)
    across = []
    for (condition, method), group in groups.items():
        baseline = group[0].baseline
        reference = groups.get((condition, baseline), []) if baseline is not None else []
        across.append(_across(group, {} if method == baseline else _search_means(reference)))
    return across


def _search_means(rows: Sequence[Row]) -> dict[int, float]:
    """Each repeat's test mean over its seeds, the repeats without one left out."""
    return {
        r.repeat: r.test_mean for r in rows if r.repeat is not None and r.test_mean is not None
    }


def _mean(values: Sequence[float]) -> float | None:
    return statistics.mean(values) if values else None


def _across(group: Sequence[Row], reference: Mapping[int, float]) -> Row:
    """The row over the searches ``group`` of one method; ``reference`` holds the baseline's
    search means ({}: none)."""
    means = _search_means(group)
    values = list(means.values())
    differences = paired_differences(means, reference)
    test_low, test_high = _bounds(t_interval(values))
    diff_low, diff_high = _bounds(t_interval(differences))
    searched = {d for r in group if r.device != "-" for d in r.device.split("/")}
    evaluated = {r.eval_device for r in group if r.eval_device is not None}
    first = group[0]
    return Row(
        condition=first.condition,
        method=first.method,
        complete=sum(r.complete for r in group),
        pruned=sum(r.pruned for r in group),
        failed=sum(r.failed for r in group),
        best_trial=None,
        best_val=_mean([r.best_val for r in group if r.best_val is not None]),
        test_mean=_mean(values),
        test_std=statistics.stdev(values) if len(values) > 1 else 0.0 if values else None,
        test_ci_low=test_low,
        test_ci_high=test_high,
        seeds=sum(r.seeds for r in group),
        baseline=first.baseline,
        diff_mean=_mean(differences),
        diff_ci_low=diff_low,
        diff_ci_high=diff_high,
        recovered=_mean([r.recovered for r in group if r.recovered is not None]),
        search_seconds=sum(r.search_seconds for r in group),
        eval_seconds=sum(r.eval_seconds for r in group),
        device="/".join(sorted(searched)) or "-",
        eval_device="/".join(sorted(evaluated)) or None,
        best_params={},
        repeat=None,
        searches=len(values),
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _interval(low: float | None, high: float | None, *, sign: str = "") -> str:
    """`` [low, high]`` in percent (``sign="+"``: signed), or nothing without an interval."""
    if low is None or high is None:
        return ""
    return f" [{100 * low:{sign}.1f}, {100 * high:{sign}.1f}]"


def _test(row: Row) -> str:
    """Mean +- std [interval] (n=): over the seeds, or for a row across searches the searches."""
    if row.test_mean is None:
        return "-"
    spread = f"{100 * row.test_mean:.1f} +- {100 * (row.test_std or 0.0):.1f}"
    n = row.seeds if row.repeat is not None else row.searches
    return f"{spread}{_interval(row.test_ci_low, row.test_ci_high)} (n={n})"


def _difference(row: Row) -> str:
    if row.diff_mean is None:
        return "-"
    interval = _interval(row.diff_ci_low, row.diff_ci_high, sign="+")
    return f"{100 * row.diff_mean:+.1f}{interval}"


def _devices(row: Row) -> str:
    """Where the row's search and evaluation ran, each device once."""
    searched = set() if row.device == "-" else set(row.device.split("/"))
    evaluated = set() if row.eval_device is None else {row.eval_device}
    return "/".join(sorted(searched | evaluated)) or "-"


Column = tuple[str, Callable[[Row], str]]


def _columns(rows: Sequence[Row]) -> list[Column]:
    """The table's columns: ``condition``, the paired difference and ``recovered`` only where
    some row has one, ``repeat`` and ``configuration`` only where the searches were repeated;
    the rows of one :func:`collect` share their baseline."""
    repeated = any(r.repeat for r in rows)
    columns = _condition(rows)
    if repeated:
        columns.append(("repeat", lambda r: str(r.repeat)))
    columns += [
        ("method", lambda r: r.method),
        ("best trial", lambda r: "-" if r.best_trial is None else str(r.best_trial)),
        ("trials (ok/pruned/failed)", lambda r: f"{r.complete}/{r.pruned}/{r.failed}"),
        ("best val %", lambda r: _pct(r.best_val)),
        ("test % mean +- std [95% CI]", _test),
        *_paired(rows, "paired"),
        *_costs(rows),
    ]
    if repeated:
        columns.append(("configuration", lambda r: format_params(r.best_params) or "-"))
    return columns


def _across_columns(rows: Sequence[Row]) -> list[Column]:
    """The columns of the rows across searches (:func:`across_searches`)."""
    return [
        *_condition(rows),
        ("method", lambda r: r.method),
        ("searches", lambda r: str(r.searches)),
        ("trials (ok/pruned/failed)", lambda r: f"{r.complete}/{r.pruned}/{r.failed}"),
        ("best val % (mean)", lambda r: _pct(r.best_val)),
        ("test % mean +- std [95% CI] over searches", _test),
        *_paired(rows, "paired by repeat"),
        *_costs(rows),
    ]


def _condition(rows: Sequence[Row]) -> list[Column]:
    return [("condition", lambda r: r.condition or "-")] if any(r.condition for r in rows) else []


def _paired(rows: Sequence[Row], how: str) -> list[Column]:
    baseline = next((r.baseline for r in rows if r.baseline is not None), None)
    return [] if baseline is None else [(f"vs {baseline} ({how}, 95% CI)", _difference)]


def _costs(rows: Sequence[Row]) -> list[Column]:
    """``recovered`` (where some row has it), the hours and the devices."""
    columns: list[Column] = []
    if any(r.recovered is not None for r in rows):
        columns.append(("noisy labels recovered %", lambda r: _pct(r.recovered)))
    return [
        *columns,
        ("search h", lambda r: f"{r.search_seconds / 3600:.3f}"),
        ("eval h", lambda r: f"{r.eval_seconds / 3600:.3f}"),
        ("device", _devices),
    ]


ACROSS_TITLE = (
    "Across searches: one value per search, its test mean over the seeds; the interval is "
    "over searches, and the difference pairs each repeat with the baseline's."
)


Table = list[tuple[str, ...]]
"""A header and the lines of cells under it."""


def _tables(rows: Sequence[Row]) -> list[tuple[str | None, Table]]:
    """The tables of :func:`collect`'s ``rows``: the searches', then (with repeats, under
    :data:`ACROSS_TITLE`) the one across them."""
    tables: list[tuple[str | None, Table]] = [(None, _cells(rows, _columns(rows)))]
    across = across_searches(rows)
    if across:
        tables.append((ACROSS_TITLE, _cells(across, _across_columns(across))))
    return tables


def _cells(rows: Sequence[Row], columns: Sequence[Column]) -> Table:
    header = tuple(name for name, _ in columns)
    return [header, *(tuple(cell(r) for _, cell in columns) for r in rows)]


def as_text(rows: Sequence[Row]) -> str:
    """The table in aligned columns, for a terminal (with repeats, and the one across them)."""
    blocks = []
    for title, table in _tables(rows):
        widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
            for line in table
        ]
        blocks.append("\n".join(lines if title is None else [title, *lines]))
    return "\n\n".join(blocks)


def as_markdown(rows: Sequence[Row]) -> str:
    """The table as markdown, for a README or a paper draft (with repeats, two tables)."""
    blocks = []
    for title, (header, *body) in _tables(rows):
        lines = [] if title is None else [title, ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(line) + " |" for line in body]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def as_html(rows: Sequence[Row]) -> str:
    """The table as an HTML ``<table>``, for the report (with repeats, two tables)."""

    def cells(tag: str, line: Sequence[str]) -> str:
        return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in line) + "</tr>"

    lines = []
    for title, (header, *body) in _tables(rows):
        if title is not None:
            lines.append(f"<p>{html.escape(title)}</p>")
        lines += ["<table>", f"<thead>{cells('th', header)}</thead>", "<tbody>"]
        lines += [cells("td", line) for line in body]
        lines += ["</tbody>", "</table>"]
    return "\n".join(lines)


def as_record(row: Row) -> dict[str, Any]:
    """The row as CSV and JSON give it: :data:`RECORD_FIELDS`, values as they are."""
    return {name: getattr(row, name) for name in RECORD_FIELDS}


def as_csv(rows: Sequence[Row]) -> str:
    """One line per row, every field of :data:`RECORD_FIELDS`; ``best_params`` as JSON. With
    repeats, the rows across searches follow (``repeat`` empty)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=RECORD_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in [*rows, *across_searches(rows)]:
        writer.writerow({**as_record(row), "best_params": json.dumps(row.best_params)})
    return out.getvalue().rstrip("\n")


def as_json(rows: Sequence[Row]) -> str:
    """A list of :func:`as_record` objects; with repeats, the rows across searches follow
    (``repeat`` null)."""
    return json.dumps([as_record(r) for r in [*rows, *across_searches(rows)]], indent=2)


LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
"""The characters LaTeX reads as commands, and how each is typeset literally."""


def latex_escape(text: str) -> str:
    r"""``text`` as LaTeX typesets it: :data:`LATEX_SPECIALS` escaped, `` +- `` as ``$\pm$``.

    Example:
        >>> print(latex_escape("test % mean +- std, clean_0 ~r1"))
        test \% mean $\pm$ std, clean\_0 \textasciitilde{}r1
    """
    escaped = "".join(LATEX_SPECIALS.get(c, c) for c in text)
    return escaped.replace(" +- ", r" $\pm$ ")


LATEX_LEFT = frozenset({"condition", "method", "configuration", "device"})
"""The columns of words, set flush left; the numbers' are flush right."""


def as_latex(rows: Sequence[Row]) -> str:
    r"""The table as a LaTeX ``tabular`` with booktabs rules (``\usepackage{booktabs}``), for a
    paper: the text table's columns and cells, escaped by :func:`latex_escape`. With repeats,
    a second ``tabular`` across searches follows, its title a comment above it."""

    def line(cells: Sequence[str]) -> str:
        return " & ".join(latex_escape(c) for c in cells) + r" \\"

    blocks = []
    for title, (header, *body) in _tables(rows):
        align = "".join("l" if name in LATEX_LEFT else "r" for name in header)
        lines = [] if title is None else [f"% {title}"]
        lines += [rf"\begin{{tabular}}{{{align}}}", r"\toprule", line(header), r"\midrule"]
        lines += [line(cells) for cells in body]
        lines += [r"\bottomrule", r"\end{tabular}"]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


FORMATS: dict[str, Callable[[Sequence[Row]], str]] = {
    "text": as_text,
    "markdown": as_markdown,
    "csv": as_csv,
    "json": as_json,
    "latex": as_latex,
}
