"""The verbs that look after a storage: ``reap``, ``delete``, ``dashboard``. None imports torch."""

from __future__ import annotations

import argparse
import sys

from tether.cli.base import EXIT_OK
from tether.cli.base import Command
from tether.cli.base import add_spec_arguments
from tether.cli.base import open_selected
from tether.cli.base import selected_methods


class ReapCommand(Command):
    """Fail the trials whose worker died (no heartbeat within the grace period) and retry them."""

    name = "reap"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_spec_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        from tether.search.execution.studies import find_studies
        from tether.search.storage import reap

        specs, storage = open_selected(args, every=False)
        for _, _, study in find_studies(specs, storage, selected_methods(specs[0], args)):
            if study is not None:
                print(f"{study.study_name}: {reap(study)} stale trial(s) failed")
        return EXIT_OK


class DeleteCommand(Command):
    """Delete a spec's studies (every condition's, or those --methods and --conditions pick).

    Lists what it will delete (trials and evaluations included) and asks first, unless --yes.
    Without a terminal to ask on, it deletes nothing unless --yes is given.
    """

    name = "delete"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_spec_arguments(parser)
        parser.add_argument("--yes", "-y", action="store_true", help="do not ask")

    def run(self, args: argparse.Namespace) -> int:
        from tether.errors import ConfigError
        from tether.search.execution.studies import delete_studies
        from tether.search.execution.studies import find_studies
        from tether.search.storage import storage_url

        specs, storage = open_selected(args, every=False)
        methods = selected_methods(specs[0], args)
        studies = [study for _, _, study in find_studies(specs, storage, methods) if study]
        for study in studies:
            n = len(study.get_trials(deepcopy=False))
            print(f"  {study.study_name} ({n} trials)", file=sys.stderr)
        where = storage_url(storage)
        if not args.yes:
            if not sys.stdin.isatty():
                raise ConfigError(
                    f"tether delete would delete {len(studies)} studies from {where}; "
                    "add --yes to do it without a terminal to ask on"
                )
            print(f"delete these {len(studies)} studies from {where}? [y/N] ", end="",
                  file=sys.stderr, flush=True)  # fmt: skip
            try:
                answer = input()
            except EOFError:
                answer = ""
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing deleted", file=sys.stderr)
                return EXIT_OK
        for name in delete_studies(specs, storage, methods):
            print(f"deleted {name}")
        return EXIT_OK


class DashboardCommand(Command):
    """Serve optuna-dashboard for a storage (on 127.0.0.1 unless told otherwise).

    Each trial's log and curve (Optuna artifacts) are served from the storage's artifact
    folder: <name>-artifacts/ beside a sqlite:/// or journal: file, tether-artifacts/ in the
    working directory for a server; or --artifacts PATH (what the spec's artifacts: names).
    """

    name = "dashboard"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8080)
        parser.add_argument(
            "--artifacts",
            default=None,
            metavar="PATH",
            help="the folder of the trials' logs and curves (default: the storage's)",
        )

    def run(self, args: argparse.Namespace) -> int:
        from pathlib import Path

        from tether.errors import ConfigError
        from tether.search.artifacts import default_artifact_dir
        from tether.search.storage import mask_url
        from tether.search.storage import open_storage
        from tether.search.storage import resolve_url

        try:
            from optuna_dashboard import run_server
        except ImportError:
            raise ConfigError(
                "optuna-dashboard is not installed; pip install tether[dashboard]"
            ) from None
        url = resolve_url(args.storage)
        folder = Path(args.artifacts) if args.artifacts else default_artifact_dir(url)
        if args.artifacts and not folder.is_dir():
            raise ConfigError(f"--artifacts {folder}: no such folder")
        storage = open_storage(url, create=False)
        store = None
        if folder.is_dir():
            from optuna.artifacts import FileSystemArtifactStore

            store = FileSystemArtifactStore(folder)
        seen = f"artifacts from {folder}" if store else f"no artifact folder ({folder})"
        print(
            f"optuna-dashboard for {mask_url(url)} on http://{args.host}:{args.port}/; {seen}",
            file=sys.stderr,
        )
        run_server(storage, host=args.host, port=args.port, artifact_store=store)
        return EXIT_OK
