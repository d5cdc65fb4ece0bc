"""The page: the comparison table, the setup, then the sections of figures, written as one
self-contained HTML file (:func:`write_report`; plotly.js inlined once, in the page's head,
so the file opens offline)."""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
import datetime
import html
import importlib.metadata
import json
from pathlib import Path
from typing import Any
import warnings

import optuna
import plotly
import plotly.offline

from tether.search.execution.studies import find_studies
from tether.search.results.compare import Row
from tether.search.results.compare import as_html
from tether.search.results.compare import collect
from tether.search.results.report._common import Plot
from tether.search.results.report._common import Section
from tether.search.results.report._common import method_colours
from tether.search.results.report.compared import overview
from tether.search.results.report.search import search_section
from tether.search.spec import StudySpec
from tether.search.storage import storage_url
from tether.version import __version__


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
