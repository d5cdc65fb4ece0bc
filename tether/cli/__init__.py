"""The ``tether`` command line: one small command class per verb, its docstring is its help.

Exit codes: 0 done, 1 the run failed, 2 bad input (one line on stderr, nothing written),
130 interrupted by Ctrl-C (SIGINT), 143 stopped by SIGTERM (128 + the signal's number, as a
shell reports a process killed by it). SIGTERM, what Kubernetes and Slurm send to preempt a
job, is handled like the first Ctrl-C: the running trials are stopped and recorded as failed
(see :class:`tether.search.execution.driver.TicketRunner`); a second signal of either kind quits at
once.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import inspect
import math
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any
from typing import NoReturn

from tether.cli.base import Command
from tether.cli.base import add_set_argument
from tether.cli.search import SEARCH_COMMANDS
from tether.errors import ConfigError
from tether.search.execution.driver import Terminated
from tether.version import __version__


EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143


def _percent(value: object) -> str:
    return "-" if not isinstance(value, int | float) else f"{100 * value:5.1f}%"


class ProgressPrinter:
    """Events in, human lines out: one line per epoch on stderr, the result on stdout."""

    def __init__(self, *, json_lines: bool) -> None:
        from tether.finetune.worker import JsonLines

        self.json_lines = JsonLines(sys.stdout) if json_lines else None
        self.epochs = 0

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if self.json_lines is not None:
            self.json_lines(event)
        if kind == "start":
            self.epochs = int(event["recipe"]["train"]["epochs"])
            sizes = event["sizes"]
            print(
                f"{event['model']['name']} ({event['model']['weights']}) on {event['device']}: "
                f"{sizes['train']} train / {sizes['val']} val / {sizes['test']} test images, "
                f"{event['classes']} classes; {event['constraint']}",
                file=sys.stderr,
            )
        elif kind == "epoch":
            val = event["val_accuracy"]
            print(
                f"epoch {event['epoch']:>3}/{self.epochs}  "
                f"train loss {event['train_loss']:.4f} acc {_percent(event['train_accuracy'])}  "
                f"val acc {_percent(val)}  lr {event['lr']:.2g}  {event['seconds']:.1f}s",
                file=sys.stderr,
                flush=True,
            )
        elif kind == "result" and self.json_lines is None:
            print(format_result(event))


def format_result(result: dict[str, Any]) -> str:
    """The final result as a short table: accuracies, then the distance moved per group."""
    lines = [
        f"val accuracy   {_percent(result['val_accuracy'])}",
        f"test accuracy  {_percent(result['test_accuracy'])}",
        f"epoch used     {result['selected_epoch']} of {result['epochs']}",
        f"time           {result['seconds']:.1f} s on {result['device']}",
        "distance from the pretrained weights (MARS norm, Frobenius norm):",
    ]
    frob = result.get("distances_frob", {})
    for group, value in result["distances"].items():
        lines.append(f"  {group:<14} {value:10.4g} {frob.get(group, math.nan):10.4g}")
    return "\n".join(lines)


class FinetuneCommand(Command):
    """Fine-tune once as a recipe says, in the foreground (progress on stderr).

    The same run a search trial makes, without the search: per-epoch progress on stderr, the
    result (accuracies, distance moved per layer group) on stdout.
    """

    name = "finetune"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("recipe", help="a recipe file, e.g. configs/digits.yaml")
        add_set_argument(parser, what="recipe", example="train.epochs=2")
        parser.add_argument(
            "--json", action="store_true", help="print the worker's JSON-lines events on stdout"
        )
        parser.add_argument(
            "--list-groups",
            action="store_true",
            help="list the model's layer groups (the names radii and penalties use) and exit",
        )
        parser.add_argument("--cache-dir", default=None, help="default: $TETHER_CACHE_DIR")

    def run(self, args: argparse.Namespace) -> int:
        from tether.finetune.recipe import load_recipe

        recipe = load_recipe(args.recipe, args.overrides)
        if args.list_groups:
            print(_group_table(recipe))
            return EXIT_OK
        from tether.finetune.worker import execute

        printer = ProgressPrinter(json_lines=args.json)
        code = execute(recipe.to_dict(), emit=printer, cache_dir=args.cache_dir, prog="tether")
        return EXIT_INTERRUPTED if code == 143 else code


def _group_table(recipe: Any) -> str:
    from dataclasses import replace

    from tether.finetune.layers import layer_groups
    from tether.finetune.layers import summarize_groups
    from tether.finetune.models import build_model

    model_cfg = replace(recipe.model, weights="none", checkpoint=None)
    n_classes = len(recipe.data.target_classes) if recipe.data.kind == "digits" else 2
    built = build_model(model_cfg, num_classes=n_classes, image_size=recipe.data.image_size)
    groups = layer_groups(built.model, head=built.head)
    rows = [f"{'group':<14} {'tensors':>8} {'parameters':>12}  modules"]
    for summary in summarize_groups(built.model, groups):
        owned = ", ".join(groups.prefixes.get(summary.name, ())) or "(not grouped)"
        if len(owned) > 40:
            owned = owned[:37] + "..."
        rows.append(f"{summary.name:<14} {summary.n_tensors:>8} {summary.n_params:>12,}  {owned}")
    return "\n".join(rows)


COMMANDS: dict[str, Command] = {c.name: c for c in (FinetuneCommand(), *SEARCH_COMMANDS)}


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
