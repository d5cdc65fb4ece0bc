"""Each method on the digits recipe over several seeds: the evidence behind the README table.

    python -m benchmarks.digits_methods --seeds 5            # configs/digits.yaml as is
    python -m benchmarks.digits_methods --set data.noise=none --set data.noise_rate=0

Every run is one in-process fine-tuning (:func:`tether.finetune.run.run`) of the same recipe with
the method's overrides; the data split and the training seed both follow the seed.
Until the search lands these settings are fixed by hand, not tuned.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import statistics
import sys
import time

from tether.finetune.config import read_yaml
from tether.finetune.recipe import recipe_from_dict
from tether.finetune.run import run


METHODS: dict[str, list[str]] = {
    "standard": ["constraint.norm=none", "constraint.radius=inf", "constraint.head_radius=inf"],
    "l2-sp": [
        "constraint.norm=none", "constraint.radius=inf", "constraint.head_radius=inf",
        "penalty.name=l2-sp", "penalty.alpha=0.1", "penalty.beta=0.01",
    ],
    "mars-pgm": [],
}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="configs/digits.yaml")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    base = read_yaml(args.recipe)
    rows = []
    for method in args.methods:
        scores = []
        started = time.perf_counter()
        for seed in range(args.seeds):
            overrides = [
                *args.overrides,
                *METHODS[method],
                f"train.seed={seed}",
                f"data.seed={seed}",
            ]
            recipe = recipe_from_dict(base, overrides)
            result = run(recipe, emit=lambda event: None)
            scores.append(100 * result["test_accuracy"])
            print(f"{method} seed {seed}: {scores[-1]:.1f}", file=sys.stderr)
        spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
        rows.append((method, statistics.mean(scores), spread, time.perf_counter() - started))
    print(f"| method | test accuracy (%), mean +- std over {args.seeds} seeds | seconds |")
    print("|---|---|---|")
    for method, mean, spread, seconds in rows:
        print(f"| {method} | {mean:.1f} +- {spread:.1f} | {seconds:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
