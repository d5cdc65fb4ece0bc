"""The search verbs of ``tether``: run, worker, evaluate, compare, report, status, reap, dashboard.

Each is a small class whose docstring is its ``--help``. They share the spec argument,
``--storage`` (or ``$TETHER_STORAGE``), ``--set`` overrides into the spec, and the device
options.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from collections.abc import Sequence
from pathlib import Path
import sys
from typing import TYPE_CHECKING

import optuna

from tether.cli.base import Command
from tether.cli.base import add_set_argument
from tether.search.spec import StudySpec
from tether.search.storage import mask_url
from tether.search.storage import open_storage
from tether.search.storage import resolve_url
from tether.search.storage import study_names


if TYPE_CHECKING:
    from tether.search.execution.launcher import Launcher
    from tether.search.execution.trials import Slot


def _spec_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="a study spec, e.g. studies/digits.yaml")
    add_set_argument(parser, what="spec", example="budget.n_trials=4")
    parser.add_argument(
        "--methods", nargs="+", default=None, metavar="METHOD", help="only these methods"
    )
    parser.add_argument(
        "--conditions",
        nargs="+",
        default=None,
        metavar="CONDITION",
        help="only these conditions of a spec with conditions: (e.g. noise rates)",
    )


def _device_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--devices",
        default="auto",
        help="auto (every visible GPU, else the CPU), cpu, or GPU indices like 0,1",
    )
    parser.add_argument(
        "--trials-per-device", type=int, default=1, help="concurrent trials on each device"
    )
    parser.add_argument(
        "--launcher",
        choices=("fork", "subprocess"),
        default="fork",
        help="start trials from a server that has imported torch (fork), or a fresh interpreter",
    )
    parser.add_argument("--log-dir", default="tether-logs", help="one log file per trial")
    parser.add_argument("--cache-dir", default=None, help="default: $TETHER_CACHE_DIR")


def _load(args: argparse.Namespace) -> list[StudySpec]:
    """The spec's conditions (one spec if it has none) that ``--conditions`` selects, every
    flag checked; nothing is opened or printed."""
    from tether.search.spec import load_specs

    specs = _conditions(load_specs(args.spec, args.overrides), args)
    _methods(specs[0], args)
    if hasattr(args, "devices"):
        from tether.search.execution.driver import parse_devices

        parse_devices(args.devices, args.trials_per_device)
    return specs


def _open(args: argparse.Namespace) -> tuple[list[StudySpec], optuna.storages.BaseStorage]:
    """:func:`_load`, then the storage, which must exist already."""
    specs = _load(args)
    return specs, open_storage(resolve_url(args.storage), create=False)


def _open_studies(
    args: argparse.Namespace, *, every: bool
) -> tuple[list[StudySpec], optuna.storages.BaseStorage]:
    """:func:`_open` for a verb that works on existing studies (see :func:`_require_studies`),
    then the storage line."""
    specs, storage = _open(args)
    _require_studies(specs, storage, args, every=every)
    _announce(args)
    return specs, storage


def _announce(args: argparse.Namespace) -> None:
    """The storage line, once the input has been checked."""
    print(f"storage: {mask_url(resolve_url(args.storage))}", file=sys.stderr)


def _selected(spec: StudySpec, args: argparse.Namespace) -> list[str]:
    return _methods(spec, args) or list(spec.methods)


def _require_studies(
    specs: Sequence[StudySpec],
    storage: optuna.storages.BaseStorage,
    args: argparse.Namespace,
    *,
    every: bool,
) -> None:
    """Refuse a spec whose studies are not in the storage: ``every`` one of them must be
    there (evaluate, worker), or at least one (the read-only verbs)."""
    from tether.errors import ConfigError

    names = study_names(storage)
    wanted = [s.study_name(m) for s in specs for m in _selected(s, args)]
    missing = [n for n in wanted if n not in names]
    if missing and (every or len(missing) == len(wanted)):
        where = mask_url(resolve_url(args.storage))
        others = "" if len(missing) == 1 else f" (nor {len(missing) - 1} more of the spec's)"
        raise ConfigError(
            f"study {missing[0]} does not exist in {where}{others}; create it with tether run"
        )


def _studies(
    specs: Sequence[StudySpec], storage: optuna.storages.BaseStorage
) -> Iterator[tuple[str, optuna.Study | None]]:
    """Every condition's and method's study name, with the study (``None``: not created)."""
    names = study_names(storage)
    for spec in specs:
        for method in spec.methods:
            name = spec.study_name(method)
            found = name in names
            yield name, optuna.load_study(study_name=name, storage=storage) if found else None


def _preflight(specs: Sequence[StudySpec]) -> None:
    """Check what every trial will read (the data folder, a checkpoint) before writing."""
    from tether.finetune.data.folder import check_folder
    from tether.finetune.models.checkpoint import read_state_dict
    from tether.finetune.recipe import recipe_from_dict

    for spec in specs:
        recipe = recipe_from_dict(spec.base_recipe())
        if recipe.data.kind == "folder":
            check_folder(recipe.data)
        if recipe.model.checkpoint is not None:
            read_state_dict(recipe.model.checkpoint)


def _conditions(specs: list[StudySpec], args: argparse.Namespace) -> list[StudySpec]:
    from tether.errors import ConfigError

    if args.conditions is None:
        return specs
    known = [s.condition for s in specs if s.condition is not None]
    if not known:
        raise ConfigError(f"--conditions given, but study spec {args.spec} has no conditions")
    unknown = [c for c in args.conditions if c not in known]
    if unknown:
        raise ConfigError(
            f"--conditions names {unknown[0]!r}, which the spec does not have; "
            f"it has {', '.join(known)}"
        )
    return [s for s in specs if s.condition in args.conditions]


def _methods(spec: StudySpec, args: argparse.Namespace) -> list[str] | None:
    """The methods ``--methods`` selects (every condition of a spec has the same methods)."""
    from tether.errors import ConfigError

    if getattr(args, "methods", None) is None:
        return None
    known = list(spec.methods)
    unknown = [m for m in args.methods if m not in known]
    if unknown:
        raise ConfigError(
            f"--methods names {unknown[0]!r}, which the spec does not have; "
            f"it has {', '.join(known)}"
        )
    return list(args.methods)


def _search(args: argparse.Namespace, *, create: bool) -> int:
    from tether.search.execution.driver import Search
    from tether.search.execution.driver import create_studies
    from tether.search.execution.driver import model_groups
    from tether.search.execution.driver import parse_devices
    from tether.search.execution.launcher import Launcher

    specs = _load(args)
    methods = _methods(specs[0], args)
    slots = parse_devices(args.devices, args.trials_per_device)
    groups = {spec.name: model_groups(spec) for spec in specs}
    if create:
        _preflight(specs)
    storage = open_storage(resolve_url(args.storage), create=create)
    if create:  # every condition first, so that workers elsewhere can join any of them
        for spec in specs:
            create_studies(spec, storage, methods=methods, groups=groups[spec.name])
    else:
        _require_studies(specs, storage, args, every=True)
    _announce(args)
    if create and args.create_only:
        names = [s.study_name(m) for s in specs for m in methods or s.methods]
        print(f"created {len(names)} studies: {', '.join(names)}", file=sys.stderr)
        return 0
    cache_dir = None if args.cache_dir is None else Path(args.cache_dir)
    with Launcher(mode=args.launcher) as launcher:
        for spec in specs:
            search = Search(
                spec,
                storage=storage,
                launcher=launcher,
                slots=slots,
                log_dir=Path(args.log_dir),
                cache_dir=cache_dir,
                methods=methods,
                worker=0 if create else None,
                groups=groups[spec.name],
            )
            print(
                f"[{spec.name}] searching {', '.join(s.method for s in search.states)} on "
                f"{len(slots)} slot(s): {', '.join(s.name for s in slots)}",
                file=sys.stderr,
            )
            search.run()
        if create and not args.no_evaluate:
            _evaluate(specs, storage, launcher, slots, args)
    if create:
        _print_table(specs, storage, "text")
        if not args.no_report:
            path = _write_report(specs, storage, args.report)
            print(f"report: {path}")
    return 0


def _evaluate(
    specs: Sequence[StudySpec],
    storage: optuna.storages.BaseStorage,
    launcher: Launcher,
    slots: Sequence[Slot],
    args: argparse.Namespace,
) -> None:
    """Re-run each selected method's best configuration of every condition over its seeds."""
    from tether.search.results.evaluate import evaluate

    for spec in specs:
        evaluate(
            spec,
            storage=storage,
            launcher=launcher,
            slots=slots,
            log_dir=Path(args.log_dir),
            cache_dir=None if args.cache_dir is None else Path(args.cache_dir),
            methods=_methods(spec, args),
        )


def _print_table(
    specs: Sequence[StudySpec], storage: optuna.storages.BaseStorage, fmt: str
) -> None:
    from tether.search.results.compare import FORMATS
    from tether.search.results.compare import collect

    print(FORMATS[fmt](collect(specs, storage)))


def _write_report(
    specs: Sequence[StudySpec], storage: optuna.storages.BaseStorage, path: str | None
) -> Path:
    from tether.search.results.report import write_report

    name = specs[0].name if len(specs) == 1 else specs[0].family
    target = Path(path or f"{name.replace('/', '_')}-report.html")
    write_report(specs, storage, target)
    return target


class RunCommand(Command):
    """Create the studies of a spec, search every method, evaluate the winners, compare.

    The main job: one Optuna study per method (named <spec>/<method>) in one storage, the
    budget enqueued once, trials run as worker processes on the device slots; then each
    method's best configuration is re-run for the spec's seeds on the test split, and the
    comparison table and an HTML report are written. Other processes or machines can join
    with `tether worker` on the same storage.
    """

    name = "run"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        _spec_arguments(parser)
        _device_arguments(parser)
        parser.add_argument(
            "--create-only",
            action="store_true",
            help="create the studies and enqueue their budget, then exit (workers run it)",
        )
        parser.add_argument("--no-evaluate", action="store_true", help="search only")
        parser.add_argument(
            "--no-report", action="store_true", help="do not write the HTML report"
        )
        parser.add_argument(
            "--report", default=None, help="report path (default: <spec>-report.html)"
        )

    def run(self, args: argparse.Namespace) -> int:
        return _search(args, create=True)


class WorkerCommand(Command):
    """Join a running search from another process or machine (same --storage).

    Claims the remaining trials of the spec's studies until none is left. Two workers never
    run the same trial, and together they run exactly the budget.
    """

    name = "worker"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        _spec_arguments(parser)
        _device_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        return _search(args, create=False)


class EvaluateCommand(Command):
    """Re-run each method's best configuration for the spec's seeds on the test split."""

    name = "evaluate"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        _spec_arguments(parser)
        _device_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        from tether.search.execution.driver import parse_devices
        from tether.search.execution.launcher import Launcher

        specs, storage = _open_studies(args, every=True)
        slots = parse_devices(args.devices, args.trials_per_device)
        with Launcher(mode=args.launcher) as launcher:
            _evaluate(specs, storage, launcher, slots, args)
        _print_table(specs, storage, "text")
        return 0


class CompareCommand(Command):
    """Print the comparison table: trials, best val, test mean +- std, hours, per method."""

    name = "compare"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        _spec_arguments(parser)
        parser.add_argument(
            "--format", choices=("text", "markdown", "csv", "json"), default="text"
        )

    def run(self, args: argparse.Namespace) -> int:
        specs, storage = _open_studies(args, every=False)
        _print_table(specs, storage, args.format)
        return 0


class ReportCommand(Command):
    """Write one self-contained HTML file of plotly figures for a spec's studies."""

    name = "report"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        _spec_arguments(parser)
        parser.add_argument("--output", "-o", default=None, help="default: <spec>-report.html")

    def run(self, args: argparse.Namespace) -> int:
        specs, storage = _open_studies(args, every=False)
        print(_write_report(specs, storage, args.output))
        return 0


class StatusCommand(Command):
    """Show each method's trials by state and what is left to run."""

    name = "status"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        _spec_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        from optuna.trial import TrialState

        specs, storage = _open_studies(args, every=False)
        states = (
            TrialState.COMPLETE,
            TrialState.PRUNED,
            TrialState.FAIL,
            TrialState.RUNNING,
            TrialState.WAITING,
        )
        width = max(32, *(len(s.study_name(m)) for s in specs for m in s.methods))
        print(
            f"{'study':<{width}} "
            + " ".join(f"{s.name.lower():>9}" for s in states)
            + "  best val"
        )
        for name, study in _studies(specs, storage):
            if study is None:
                print(f"{name:<{width}} (not created)")
                continue
            trials = study.get_trials(deepcopy=False)
            counts = [sum(t.state == s for t in trials) for s in states]
            values = [
                t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None
            ]
            best = f"{100 * max(values):.1f}%" if values else "-"
            print(f"{name:<{width}} " + " ".join(f"{c:>9}" for c in counts) + f"  {best}")
        return 0


class ReapCommand(Command):
    """Fail the trials whose worker died (no heartbeat within the grace period) and retry them."""

    name = "reap"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        _spec_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        from tether.search.storage import reap

        specs, storage = _open_studies(args, every=False)
        for name, study in _studies(specs, storage):
            if study is not None:
                print(f"{name}: {reap(study)} stale trial(s) failed")
        return 0


class DashboardCommand(Command):
    """Serve optuna-dashboard for a storage (on 127.0.0.1 unless told otherwise)."""

    name = "dashboard"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8080)

    def run(self, args: argparse.Namespace) -> int:
        from tether.errors import ConfigError

        try:
            from optuna_dashboard import run_server
        except ImportError:
            raise ConfigError(
                "optuna-dashboard is not installed; pip install tether[dashboard]"
            ) from None
        url = resolve_url(args.storage)
        storage = open_storage(url, create=False)
        print(
            f"optuna-dashboard for {mask_url(url)} on http://{args.host}:{args.port}/",
            file=sys.stderr,
        )
        run_server(storage, host=args.host, port=args.port)
        return 0


SEARCH_COMMANDS: tuple[Command, ...] = (
    RunCommand(),
    WorkerCommand(),
    EvaluateCommand(),
    CompareCommand(),
    ReportCommand(),
    StatusCommand(),
    ReapCommand(),
    DashboardCommand(),
)
