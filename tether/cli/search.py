"""The verbs that run trials: ``run`` (the main job), ``worker`` (join it), ``evaluate``.

They share the spec argument, ``--storage`` (or ``$TETHER_STORAGE``), ``--set`` overrides into
the spec, and the device options. Each checks every input (the spec, the flags, the model's
names against torchvision, the data folder, a checkpoint) before it opens the storage.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tether.cli.base import EXIT_OK
from tether.cli.base import Command
from tether.cli.base import add_device_arguments
from tether.cli.base import add_spec_arguments
from tether.cli.base import load_selected
from tether.cli.base import open_selected
from tether.cli.base import selected_methods
from tether.cli.base import storage_line
from tether.cli.results import print_table
from tether.cli.results import write_report
from tether.progress import progress


if TYPE_CHECKING:
    import optuna

    from tether.finetune.recipe import Recipe
    from tether.search.execution.launcher import Launcher
    from tether.search.execution.slots import Slot
    from tether.search.spec import StudySpec


def _preflight(recipes: Sequence[Recipe]) -> None:
    """Check what every trial will read (the data folder, a checkpoint) before writing."""
    from tether.finetune.data.folder import check_folder
    from tether.finetune.models.checkpoint import read_state_dict

    for recipe in recipes:
        if recipe.data.kind == "folder":
            check_folder(recipe.data)
        if recipe.model.checkpoint is not None:
            read_state_dict(recipe.model.checkpoint)


def _search(args: argparse.Namespace, *, create: bool) -> int:
    from tether.finetune.models.zoo import check_model
    from tether.finetune.recipe import recipe_from_dict
    from tether.search.execution.launcher import Launcher
    from tether.search.execution.runner import Search
    from tether.search.execution.runner import seed_offset
    from tether.search.execution.slots import parse_devices
    from tether.search.execution.studies import create_studies
    from tether.search.execution.studies import model_groups
    from tether.search.execution.studies import require_studies
    from tether.search.storage import open_storage
    from tether.search.storage import resolve_url

    specs = load_selected(args)
    methods = selected_methods(specs[0], args)
    slots = parse_devices(args.devices, args.trials_per_device)
    recipes = [recipe_from_dict(spec.base_recipe()) for spec in specs]
    for recipe in recipes:
        check_model(recipe.model)
    groups: dict[str | None, list[str]] = {}  # by condition: its repeats share the recipe
    for spec in specs:
        if spec.condition not in groups:
            groups[spec.condition] = model_groups(spec)
    if create:
        _preflight(recipes)
    storage = open_storage(resolve_url(args.storage), create=create)
    if create:  # every condition first, so that workers elsewhere can join any of them
        for spec in specs:
            create_studies(spec, storage, methods=methods, groups=groups[spec.condition])
    else:
        require_studies(specs, storage, methods)
    storage_line(args)
    if create and args.create_only:
        names = [s.study_name(m) for s in specs for m in methods or s.methods]
        progress(f"created {len(names)} studies: {', '.join(names)}")
        return EXIT_OK
    cache_dir = None if args.cache_dir is None else Path(args.cache_dir)
    with Launcher(mode=args.launcher) as launcher:
        # repeat-major: every condition's first search (the one without repeats) before any
        # repeat, so that a run stopped early has compared every condition once
        for spec in sorted(specs, key=lambda s: s.repeat):
            search = Search(
                spec,
                storage=storage,
                launcher=launcher,
                slots=slots,
                log_dir=Path(args.log_dir),
                cache_dir=cache_dir,
                methods=methods,
                seed_offset=0 if create else seed_offset(),
                groups=groups[spec.condition],
            )
            progress(
                f"[{spec.name}] searching {', '.join(s.method for s in search.states)} on "
                f"{len(slots)} slot(s): {', '.join(s.name for s in slots)}"
            )
            search.run()
        if create and not args.no_evaluate:
            _evaluate(specs, storage, launcher, slots, args)
    if create:
        print_table(specs, storage, "text")
        if not args.no_report:
            print(f"report: {write_report(specs, storage, args.report)}")
    return EXIT_OK


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
            methods=selected_methods(spec, args),
        )


class RunCommand(Command):
    """Create the studies of a spec, search every method, evaluate the winners, compare.

    The main job: one Optuna study per method (named <spec>/<method>) in one storage, the
    budget enqueued once, trials run as worker processes on the device slots; then each
    method's best configuration is re-run for the spec's seeds on the test split, and the
    comparison table and an HTML report are written. Other processes or machines can join
    with `tether worker` on the same storage. With budget.repeats: R, all of it R times over,
    each repeat its own studies (<spec>~r<r>/<method>) and sampler seed, every condition's
    first search before any repeat.
    """

    name = "run"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_spec_arguments(parser)
        add_device_arguments(parser)
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
        add_spec_arguments(parser)
        add_device_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        return _search(args, create=False)


class EvaluateCommand(Command):
    """Re-run each method's best configuration for the spec's seeds on the test split."""

    name = "evaluate"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_spec_arguments(parser)
        add_device_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        from tether.search.execution.launcher import Launcher
        from tether.search.execution.slots import parse_devices

        specs, storage = open_selected(args, every=True)
        slots = parse_devices(args.devices, args.trials_per_device)
        with Launcher(mode=args.launcher) as launcher:
            _evaluate(specs, storage, launcher, slots, args)
        print_table(specs, storage, "text")
        return EXIT_OK
