"""``tether finetune``: one fine-tuning run in the foreground, no storage, no search."""

from __future__ import annotations

import argparse
import math
import sys
from typing import TYPE_CHECKING
from typing import Any

from tether.cli.base import EXIT_INTERRUPTED
from tether.cli.base import EXIT_OK
from tether.cli.base import Command
from tether.cli.base import add_set_argument
from tether.progress import progress


if TYPE_CHECKING:
    from tether.finetune.recipe import Recipe


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
            progress(
                f"{event['model']['name']} ({event['model']['weights']}) on {event['device']}: "
                f"{sizes['train']} train / {sizes['val']} val / {sizes['test']} test images, "
                f"{event['classes']} classes; {event['constraint']}"
            )
        elif kind == "epoch":
            val = event["val_accuracy"]
            progress(
                f"epoch {event['epoch']:>3}/{self.epochs}  "
                f"train loss {event['train_loss']:.4f} acc {_percent(event['train_accuracy'])}  "
                f"val acc {_percent(val)}  lr {event['lr']:.2g}  {event['seconds']:.1f}s"
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
    learned = result.get("learned_radii")
    if learned:
        lines.append("learned radius per group (absolute, relative to the pretrained rows):")
        for group, value in learned["absolute"].items():
            lines.append(f"  {group:<14} {value:10.4g} {learned['relative'][group]:10.4g}")
    if "probe" in result:
        lines.append(f"linear probe   C = {result['probe']['c']:.3g}")
    if "wise" in result:
        lines.append(f"WiSE-FT        alpha = {result['wise']['alpha']:g}")
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


def _group_table(recipe: Recipe) -> str:
    from tether.finetune.layers import summarize_groups
    from tether.finetune.models.build import build_skeleton

    built, groups = build_skeleton(recipe)
    rows = [f"{'group':<14} {'tensors':>8} {'parameters':>12}  modules"]
    for summary in summarize_groups(built.model, groups):
        owned = ", ".join(groups.prefixes.get(summary.name, ())) or "(not grouped)"
        if len(owned) > 40:
            owned = owned[:37] + "..."
        rows.append(f"{summary.name:<14} {summary.n_tensors:>8} {summary.n_params:>12,}  {owned}")
    return "\n".join(rows)
