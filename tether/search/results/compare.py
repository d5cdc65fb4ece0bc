"""The paper-style comparison table, read from the studies alone.

One row per method: trials (complete / pruned / failed), the best validation accuracy of the
search, the test accuracy of the evaluation (mean +- std over seeds) and the compute spent
(search + evaluation), as text, markdown, CSV or JSON. A spec with ``conditions:`` (label-noise
rates, say) gives one row per condition and method, and where self label-correction ran, the
share of the corrupted training labels it put right (mean over the evaluation seeds).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
import csv
from dataclasses import asdict
from dataclasses import dataclass
import io
import json

import optuna
from optuna.trial import TrialState

from tether.search.execution.studies import best_trial
from tether.search.execution.studies import find_studies
from tether.search.results.evaluate import EVALUATION_ATTR
from tether.search.spec import StudySpec


@dataclass(frozen=True)
class Row:
    condition: str | None
    method: str
    complete: int
    pruned: int
    failed: int
    best_val: float | None
    test_mean: float | None
    test_std: float | None
    seeds: int
    hours: float
    device: str
    recovered: float | None
    best_params: dict[str, object]


def collect(
    specs: StudySpec | Sequence[StudySpec], storage: optuna.storages.BaseStorage
) -> list[Row]:
    """One row per condition and method of ``specs`` that has a study in ``storage``."""
    rows = []
    for spec, method, study in find_studies(
        [specs] if isinstance(specs, StudySpec) else specs, storage
    ):
        if study is None:
            continue
        trials = study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        best = best_trial(study)
        evaluation = study.user_attrs.get(EVALUATION_ATTR, {})
        seconds = sum(float(t.user_attrs.get("seconds", 0.0)) for t in trials)
        seconds += float(evaluation.get("seconds", 0.0))
        devices = {str(t.user_attrs.get("device")) for t in trials if "device" in t.user_attrs}
        rows.append(
            Row(
                condition=spec.condition,
                method=method,
                complete=len(complete),
                pruned=sum(t.state == TrialState.PRUNED for t in trials),
                failed=sum(t.state == TrialState.FAIL for t in trials),
                best_val=None if best is None else best.value,
                test_mean=evaluation.get("mean"),
                test_std=evaluation.get("std"),
                seeds=sum(v is not None for v in evaluation.get("test_accuracy", [])),
                hours=seconds / 3600,
                device="/".join(sorted(devices)) or "-",
                recovered=evaluation.get("recovered_mean"),
                best_params={} if best is None else dict(best.params),
            )
        )
    return rows


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _test(row: Row) -> str:
    if row.test_mean is None:
        return "-"
    return f"{100 * row.test_mean:.1f} +- {100 * (row.test_std or 0.0):.1f} (n={row.seeds})"


def _columns(rows: Sequence[Row]) -> list[tuple[str, Callable[[Row], str]]]:
    """The table's columns: ``condition`` and ``recovered`` only where some row has one."""
    columns: list[tuple[str, Callable[[Row], str]]] = []
    if any(r.condition for r in rows):
        columns.append(("condition", lambda r: r.condition or "-"))
    columns += [
        ("method", lambda r: r.method),
        ("trials (ok/pruned/failed)", lambda r: f"{r.complete}/{r.pruned}/{r.failed}"),
        ("best val %", lambda r: _pct(r.best_val)),
        ("test % mean +- std", _test),
    ]
    if any(r.recovered is not None for r in rows):
        columns.append(("noisy labels recovered %", lambda r: _pct(r.recovered)))
    columns += [("hours", lambda r: f"{r.hours:.3f}"), ("device", lambda r: r.device)]
    return columns


def _table(rows: Sequence[Row]) -> list[tuple[str, ...]]:
    columns = _columns(rows)
    header = tuple(name for name, _ in columns)
    return [header, *(tuple(cell(r) for _, cell in columns) for r in rows)]


def as_text(rows: Sequence[Row]) -> str:
    table = _table(rows)
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in table
    )


def as_markdown(rows: Sequence[Row]) -> str:
    header, *body = _table(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(line) + " |" for line in body]
    return "\n".join(lines)


def as_csv(rows: Sequence[Row]) -> str:
    out = io.StringIO()
    fields = [f for f in Row.__dataclass_fields__ if f != "best_params"] + ["best_params"]
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        data = asdict(row)
        data["best_params"] = json.dumps(row.best_params)
        writer.writerow(data)
    return out.getvalue().rstrip("\n")


def as_json(rows: Sequence[Row]) -> str:
    return json.dumps([asdict(r) for r in rows], indent=2)


FORMATS: dict[str, Callable[[Sequence[Row]], str]] = {
    "text": as_text,
    "markdown": as_markdown,
    "csv": as_csv,
    "json": as_json,
}
