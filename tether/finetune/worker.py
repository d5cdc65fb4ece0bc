"""The worker process: one fine-tuning run, reported as JSON lines on stdout.

Usage::

    python -m tether.finetune.worker recipe.json        # or recipe.yaml, or - for stdin
    python -m tether.finetune.worker - --set train.epochs=2 < recipe.json

The input is a resolved recipe (``Recipe.to_dict()``). One JSON object per line, flushed as
it happens:

* ``{"event": "start", "recipe": {...}, "device": "cuda", "groups": [...], ...}``
* ``{"event": "epoch", "epoch": 3, "train_loss": ..., "val_accuracy": ..., "seconds": ...}``
* ``{"event": "result", "val_accuracy": ..., "test_accuracy": ..., "distances": {...}, ...}``
* ``{"event": "error", "kind": "config" | "data" | "model" | "checkpoint" | "oom" | "crash",
  "message": "..."}``
* ``{"event": "stopped", "epoch": ...}`` after SIGTERM (or SIGINT): the run stops at the next
  batch.

Exit codes: 0 result, 2 bad input, 1 any other failure, 143 stopped. Human logs go to stderr.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from collections.abc import Sequence
import json
import signal
import sys
import threading
import traceback
from typing import Any
from typing import TextIO

from tether.errors import ConfigError
from tether.finetune.config import read_yaml
from tether.jsondata import json_safe


EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_STOPPED = 0, 1, 2, 143


class JsonLines:
    """Writes one event per line and flushes, so a reader sees it at once."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.last_epoch = 0

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("event") == "epoch":
            self.last_epoch = int(event["epoch"])
        self.stream.write(json.dumps(json_safe(event)) + "\n")
        self.stream.flush()


def read_recipe_data(source: str) -> dict[str, Any]:
    """A recipe mapping from a JSON or YAML file, or JSON on stdin (``-``)."""
    if source.endswith((".yaml", ".yml")):
        return read_yaml(source)
    try:
        if source == "-":
            data = json.load(sys.stdin)
        else:
            with open(source, encoding="utf-8") as handle:
                data = json.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"recipe {source} does not exist") from None
    except json.JSONDecodeError as error:
        where = "stdin" if source == "-" else source
        raise ConfigError(f"recipe on {where} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError("a worker recipe must be a JSON object")
    return data


def execute(
    data: dict[str, Any],
    *,
    overrides: Sequence[str] = (),
    emit: Callable[[dict[str, Any]], None],
    cache_dir: str | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    prog: str = "worker",
) -> int:
    """Run one recipe, turning every outcome into an event and an exit code.

    Expected failures also print one line, ``<prog>: error: ...``, on stderr.
    """
    from pathlib import Path

    import torch

    from tether.finetune.models.zoo import check_model
    from tether.finetune.recipe import recipe_from_dict
    from tether.finetune.run import run
    from tether.finetune.training.loop import Stopped

    try:
        recipe = recipe_from_dict(data, overrides)
        check_model(recipe.model)
        run(
            recipe,
            emit=emit,
            cache_dir=None if cache_dir is None else Path(cache_dir),
            should_stop=should_stop,
        )
        return EXIT_OK
    except Stopped:
        emit({"event": "stopped", "epoch": getattr(emit, "last_epoch", None)})
        return EXIT_STOPPED
    except ConfigError as error:
        emit({"event": "error", "kind": error.kind, "message": str(error)})
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except torch.cuda.OutOfMemoryError as error:
        emit({"event": "error", "kind": "oom", "message": str(error).splitlines()[0]})
        print(f"{prog}: error: out of GPU memory: {error}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as error:  # the harness must learn of any crash, then fail the trial
        traceback.print_exc(file=sys.stderr)
        emit({"event": "error", "kind": "crash", "message": f"{type(error).__name__}: {error}"})
        return EXIT_FAILED


def install_stop_handlers() -> threading.Event:
    """SIGTERM and SIGINT set an event the training loop polls between batches."""
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tether.finetune.worker", description=__doc__.splitlines()[0]
    )
    parser.add_argument("recipe", help="resolved recipe: a .json or .yaml file, or - for stdin")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    parser.add_argument("--cache-dir", default=None, help="default: $TETHER_CACHE_DIR")
    args = parser.parse_args(argv)
    stop = install_stop_handlers()
    emit = JsonLines(sys.stdout)
    try:
        data = read_recipe_data(args.recipe)
    except ConfigError as error:
        emit({"event": "error", "kind": error.kind, "message": str(error)})
        print(f"worker: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return execute(
        data,
        overrides=args.overrides,
        emit=emit,
        cache_dir=args.cache_dir,
        should_stop=stop.is_set,
    )


if __name__ == "__main__":
    sys.exit(main())
