"""The verbs that read a search: ``status``, ``compare``, ``report``. None imports torch."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

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


FORMATS = ("text", "markdown", "csv", "json")


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
    """Write one self-contained HTML file: the comparison table and plotly figures.

    Cost against test accuracy for every method first, then each method's search.
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


class StatusCommand(Command):
    """Show each method's trials by state and what is left to run."""

    name = "status"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_spec_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        from optuna.trial import TrialState

        from tether.search.execution.studies import best_trial
        from tether.search.execution.studies import find_studies

        specs, storage = open_selected(args, every=False)
        methods = selected_methods(specs[0], args)
        states = (
            TrialState.COMPLETE,
            TrialState.PRUNED,
            TrialState.FAIL,
            TrialState.RUNNING,
            TrialState.WAITING,
        )
        found = find_studies(specs, storage, methods)
        width = max(32, *(len(spec.study_name(method)) for spec, method, _ in found))
        print(
            f"{'study':<{width}} "
            + " ".join(f"{s.name.lower():>9}" for s in states)
            + "  best val"
        )
        for spec, method, study in found:
            name = spec.study_name(method)
            if study is None:
                print(f"{name:<{width}} (not created)")
                continue
            trials = study.get_trials(deepcopy=False)
            counts = [sum(t.state == s for t in trials) for s in states]
            best = best_trial(study)
            shown = "-" if best is None or best.value is None else f"{100 * best.value:.1f}%"
            print(f"{name:<{width}} " + " ".join(f"{c:>9}" for c in counts) + f"  {shown}")
        return EXIT_OK
