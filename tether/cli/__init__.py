"""The ``tether`` command line: one small command class per verb, its docstring its help.

The verbs, by family: :mod:`~tether.cli.finetune` (one run), :mod:`~tether.cli.search` (run,
worker, evaluate), :mod:`~tether.cli.results` (status, compare, report, export) and
:mod:`~tether.cli.storage` (reap, delete, dashboard). Building the parser imports none of
torch, torchvision, Optuna or plotly: ``tether --help`` starts as fast as Python does, and
each verb imports what it needs when it runs.

Before or after the verb, ``-q`` leaves only results (stdout), warnings and errors, and ``-v``
adds debug lines and Optuna's own (see :func:`tether.cli.base.verbosity`).

Exit codes: 0 done, 1 the run failed, 2 bad input (one line on stderr, nothing written),
130 interrupted by Ctrl-C (SIGINT), 143 stopped by SIGTERM (128 + the signal's number, as a
shell reports a process killed by it). SIGTERM, what Kubernetes and Slurm send to preempt a
job, is handled like the first Ctrl-C: the running trials are stopped and recorded as failed
(see :class:`tether.search.execution.runner.TicketRunner`); a second signal of either kind
quits at once.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import inspect
import os
import signal
import sys
import threading
from types import FrameType
from typing import NoReturn

from tether.cli.base import EXIT_BAD_INPUT
from tether.cli.base import EXIT_FAILED
from tether.cli.base import EXIT_INTERRUPTED
from tether.cli.base import EXIT_TERMINATED
from tether.cli.base import NORMAL
from tether.cli.base import Command
from tether.cli.base import add_verbosity_arguments
from tether.cli.base import verbosity
from tether.cli.finetune import FinetuneCommand
from tether.cli.results import CompareCommand
from tether.cli.results import ExportCommand
from tether.cli.results import ReportCommand
from tether.cli.results import StatusCommand
from tether.cli.search import EvaluateCommand
from tether.cli.search import RunCommand
from tether.cli.search import WorkerCommand
from tether.cli.storage import DashboardCommand
from tether.cli.storage import DeleteCommand
from tether.cli.storage import ReapCommand
from tether.errors import ConfigError
from tether.errors import Terminated
from tether.version import __version__


COMMANDS: dict[str, Command] = {
    command.name: command
    for command in (
        FinetuneCommand(),
        RunCommand(),
        WorkerCommand(),
        EvaluateCommand(),
        CompareCommand(),
        ReportCommand(),
        ExportCommand(),
        StatusCommand(),
        ReapCommand(),
        DeleteCommand(),
        DashboardCommand(),
    )
}


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (the usage block is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"tether: error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tether",
        description="Search the radii that keep a fine-tuned network close to its "
        "pretrained weights (MARS-PGM and its baselines), with Optuna.",
    )
    parser.add_argument("--version", action="version", version=f"tether {__version__}")
    storage_help = "Optuna storage URL (default: $TETHER_STORAGE, else sqlite:///tether.db)"
    parser.add_argument("--storage", default=None, help=storage_help)
    add_verbosity_arguments(parser, default=NORMAL)
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )
    for name, command in COMMANDS.items():
        doc = inspect.getdoc(command) or ""
        child = sub.add_parser(
            name,
            help=doc.splitlines()[0],
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        child.add_argument("--storage", default=argparse.SUPPRESS, help=storage_help)
        add_verbosity_arguments(child, default=argparse.SUPPRESS)
        command.add_arguments(child)
    return parser


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tether`` console script."""
    args = build_parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    try:
        with verbosity(args.verbosity):
            return COMMANDS[args.command].run(args)
    except ConfigError as error:
        print(f"tether: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Terminated:
        print("tether: stopped by SIGTERM", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("tether: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except Exception as error:
        from tether.search.storage import describe_error
        from tether.search.storage import is_storage_error

        if not is_storage_error(error):
            raise
        # out of reach for longer than the retries wait ($TETHER_RECONNECT_TIMEOUT)
        print(f"tether: error: the storage failed: {describe_error(error)}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
