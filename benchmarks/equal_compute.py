"""Searched against learned radii at equal compute: best-so-far test accuracy and device-seconds.

    make demo            # studies/digits.yaml into demo.db
    make equal-compute   # digits-cold.yaml, digits-warm.yaml into demo.db, then this script

For each study (``--studies``, default MARS-PGM cold, warm-started from FTP and with the
hand-tuned point of the demo, FTP and TPGM), the trials are replayed in the order they were
numbered: after ``k`` trials the search would hand the user its best-validation configuration
so far, at the cost of the ``k`` trials' device-seconds. That configuration is re-run here on
the test split over ``--seeds`` seeds (the protocol of ``tether evaluate``: the seed sets the
split, the label noise and the training), so every point is a test mean with its spread. A
learned method's first trial (its defaults, enqueued by the spec) is "one run"; its whole
study is "knobs searched". Only the configurations that were ever best are re-run.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
import statistics
import sys
from typing import Any

import optuna
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from tether.finetune.recipe import recipe_from_dict
from tether.finetune.run import run
from tether.jsondata import deep_copy


CURVES = (
    "digits-cold/mars-pgm", "digits-warm/mars-pgm", "digits/mars-pgm", "digits/ftp", "digits/tpgm",
)  # fmt: skip


@dataclass(frozen=True)
class Point:
    study: str
    trials: int
    seconds: float
    trial: int
    val: float
    test: list[float]


def _test_scores(recipe: dict[str, Any], seeds: int) -> list[float]:
    scores = []
    for seed in range(seeds):
        data = deep_copy(recipe)
        data["train"].update(seed=seed, test=True, refit=False)
        data["data"]["seed"] = seed
        scores.append(100 * float(run(recipe_from_dict(data))["test_accuracy"]))
    return scores


Cache = dict[tuple[str, int], list[float]]


def curve(study: optuna.Study, *, seeds: int, cache: Cache) -> list[Point]:
    """The best-so-far configuration after each trial, with its test scores."""
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    points = []
    seconds = 0.0
    best: tuple[float, FrozenTrial] | None = None
    for k, trial in enumerate(trials, start=1):
        seconds += float(trial.user_attrs.get("seconds", 0.0))
        value = trial.value if trial.state == TrialState.COMPLETE else None
        if value is not None and (best is None or value > best[0]):
            best = (value, trial)
        if best is None:
            continue
        val, chosen = best
        key = (study.study_name, chosen.number)
        if key not in cache:
            print(f"{study.study_name}: testing trial {chosen.number}", file=sys.stderr)
            cache[key] = _test_scores(chosen.user_attrs["recipe"], seeds)
        points.append(Point(study.study_name, k, seconds, chosen.number, val, cache[key]))
    return points


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default="sqlite:///demo.db")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--studies", nargs="+", default=list(CURVES))
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cache: Cache = {}
    test = f"test % (mean +- std, {args.seeds} seeds)"
    print(f"| study | trials | search device-s | best trial | its val % | {test} |")
    print("|---|---|---|---|---|---|")
    for name in args.studies:
        study = optuna.load_study(study_name=name, storage=args.storage)
        for point in curve(study, seeds=args.seeds, cache=cache):
            spread = statistics.stdev(point.test) if len(point.test) > 1 else 0.0
            print(
                f"| {point.study} | {point.trials} | {point.seconds:.0f} | {point.trial} | "
                f"{100 * point.val:.1f} | {statistics.mean(point.test):.1f} +- {spread:.1f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
