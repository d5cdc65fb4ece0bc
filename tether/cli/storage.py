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
    """Serve optuna-dashboard for a storage (on 127.0.0.1 unless told otherwise)."""

    name = "dashboard"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8080)

    def run(self, args: argparse.Namespace) -> int:
        from tether.errors import ConfigError
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
        storage = open_storage(url, create=False)
        print(
            f"optuna-dashboard for {mask_url(url)} on http://{args.host}:{args.port}/",
            file=sys.stderr,
        )
        run_server(storage, host=args.host, port=args.port)
        return EXIT_OK
