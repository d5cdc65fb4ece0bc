"""The verbs that read a search: ``status``, ``compare``, ``report``, ``export``. None
imports torch."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
import sys
from typing import TYPE_CHECKING
from typing import Any

from tether.cli.base import EXIT_OK
from tether.cli.base import Command
from tether.cli.base import add_baseline_argument
from tether.cli.base import add_spec_arguments
from tether.cli.base import open_selected
from tether.cli.base import selected_baseline
from tether.cli.base import selected_methods


if TYPE_CHECKING:
    import optuna

    from tether.search.spec import StudySpec


FORMATS = ("text", "markdown", "csv", "json", "latex")
STATUS_FORMATS = ("table", "json", "yaml")
STATES = ("complete", "pruned", "fail", "running", "waiting")
"""The trial states ``tether status`` counts, as Optuna names them (lower case)."""


def print_table(
    specs: Sequence[StudySpec],
    storage: optuna.storages.BaseStorage,
    fmt: str,
    *,
    baseline: str | None = None,
) -> None:
    """The comparison table of ``specs`` on stdout, as ``fmt``, paired with ``baseline``
    (default: see :func:`~tether.cli.base.selected_baseline`)."""
    from tether.search.results.compare import FORMATS as WRITERS
    from tether.search.results.compare import collect

    chosen = selected_baseline(specs[0], baseline)
    print(WRITERS[fmt](collect(specs, storage, baseline=chosen)))


def write_report(
    specs: Sequence[StudySpec],
    storage: optuna.storages.BaseStorage,
    path: str | None,
    *,
    baseline: str | None = None,
) -> Path:
    """The HTML report of ``specs`` at ``path`` (default: ``<spec>-report.html``), paired
    with ``baseline`` (default: see :func:`~tether.cli.base.selected_baseline`)."""
    from tether.search.results.report import write_report as write

    name = specs[0].name if len(specs) == 1 else specs[0].family
    target = Path(path or f"{name.replace('/', '_')}-report.html")
    write(specs, storage, target, baseline=selected_baseline(specs[0], baseline))
    return target


class CompareCommand(Command):
    """Print the comparison table: test accuracy and interval, difference to a baseline, hours.

    Per method (and condition): its trials, the configuration it reports, the test accuracy
    over the evaluation seeds (mean +- std and the interval of the mean), the difference to
    the baseline paired by seed, and the search and evaluation hours. A spec with
    budget.repeats > 1 has these rows for every repeat of the search, with the configuration
    each chose, then one row per method across the searches: the searches' test means, their
    interval, and the difference to the baseline paired by repeat. The seeds' interval is
    how sure one search's winner is; the searches' is how much the winner depends on the
    search.
    """

    name = "compare"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_spec_arguments(parser)
        add_baseline_argument(parser)
        parser.add_argument("--format", choices=FORMATS, default="text")

    def run(self, args: argparse.Namespace) -> int:
        specs, storage = open_selected(args, every=False)
        print_table(specs, storage, args.format, baseline=args.baseline)
        return EXIT_OK


class ReportCommand(Command):
    """Write one self-contained HTML file: the comparison table, the setup, then the figures.

    The methods compared first (one panel per condition and repeat), then each search's
    figures, Optuna's among them.
    """

    name = "report"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_spec_arguments(parser)
        add_baseline_argument(parser)
        parser.add_argument("--output", "-o", default=None, help="default: <spec>-report.html")

    def run(self, args: argparse.Namespace) -> int:
        specs, storage = open_selected(args, every=False)
        print(write_report(specs, storage, args.output, baseline=args.baseline))
        return EXIT_OK


def status_records(
    specs: Sequence[StudySpec],
    storage: optuna.storages.BaseStorage,
    methods: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One record per condition's, repeat's and (selected) method's study: whose it is,
    whether it was ``created``, its ``trials`` by state (:data:`STATES`), and its best trial's
    number, value and parameters (None without a complete trial)."""
    from tether.search.execution.studies import best_trial
    from tether.search.execution.studies import find_studies

    records = []
    for spec, method, study in find_studies(specs, storage, methods):
        trials = [] if study is None else study.get_trials(deepcopy=False)
        best = None if study is None else best_trial(study)
        records.append(
            {
                "study": spec.study_name(method),
                "spec": spec.family,
                "condition": spec.condition,
                "repeat": spec.repeat,
                "method": method,
                "created": study is not None,
                "trials": {s: sum(t.state.name.lower() == s for t in trials) for s in STATES},
                "best_trial": None if best is None else best.number,
                "best_value": None if best is None else best.value,
                "best_params": None if best is None else dict(best.params),
            }
        )
    return records


def status_table(records: Sequence[dict[str, Any]]) -> str:
    """:func:`status_records` in aligned columns: the trials by state and the best value."""
    width = max([32, *(len(r["study"]) for r in records)])
    lines = [f"{'study':<{width}} " + " ".join(f"{s:>9}" for s in STATES) + "  best val"]
    for record in records:
        if not record["created"]:
            lines.append(f"{record['study']:<{width}} (not created)")
            continue
        value = record["best_value"]
        shown = "-" if value is None else f"{100 * value:.1f}%"
        counts = " ".join(f"{record['trials'][s]:>9}" for s in STATES)
        lines.append(f"{record['study']:<{width}} {counts}  {shown}")
    return "\n".join(lines)


class StatusCommand(Command):
    """Show each method's trials by state and what is left to run.

    As a table, or (--format json, yaml) one record per study: spec, condition, repeat,
    method, whether it was created, its trials by state and its best trial.
    """

    name = "status"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_spec_arguments(parser)
        parser.add_argument("--format", choices=STATUS_FORMATS, default="table")

    def run(self, args: argparse.Namespace) -> int:
        specs, storage = open_selected(args, every=False)
        records = status_records(specs, storage, selected_methods(specs[0], args))
        if args.format == "json":
            import json

            print(json.dumps(records, indent=2))
        elif args.format == "yaml":
            import yaml

            print(yaml.safe_dump(records, sort_keys=False), end="")
        else:
            print(status_table(records))
        return EXIT_OK


class ExportCommand(Command):
    """Write every trial of the spec's studies to one table: CSV, or Parquet by the suffix.

    One row per trial, with the columns of Optuna's Study.trials_dataframe() (number, value,
    datetime_start, datetime_complete, duration, params_<name>, user_attrs_<key>, state)
    after study, spec, condition, repeat and method. The user attributes are the scalars:
    seconds, device, test accuracy, ...; and one column per layer group for the distances
    moved (user_attrs_distances_<group>) and the radii learned
    (user_attrs_learned_radii_absolute_<group>). Needs pandas, and pyarrow for Parquet:
    install tether[export].
    """

    name = "export"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_spec_arguments(parser)
        parser.add_argument(
            "--output",
            "-o",
            default="-",
            help="trials.csv, trials.parquet, or - for CSV on stdout (the default)",
        )

    def run(self, args: argparse.Namespace) -> int:
        from tether.search.results.export import STDOUT
        from tether.search.results.export import export_format
        from tether.search.results.export import require_writer
        from tether.search.results.export import trial_records
        from tether.search.results.export import write_trials

        require_writer(export_format(args.output))
        specs, storage = open_selected(args, every=False)
        records = trial_records(specs, storage, selected_methods(specs[0], args))
        write_trials(records, args.output)
        if args.output != STDOUT:
            trials, studies = len(records), len({r["study"] for r in records})
            print(
                f"exported {trials} {'trial' if trials == 1 else 'trials'} of {studies} "
                f"{'study' if studies == 1 else 'studies'}",
                file=sys.stderr,
            )
            print(args.output)
        return EXIT_OK
