"""Per-trial overhead of the search harness, on a worker that does no training.

    python -m benchmarks.search --trials 40 --storages sqlite postgres --workers 1 4

Each trial runs the whole path of a real one: a ticket is claimed, 5 parameters are sampled
(TPE), a worker process is started, it reports 10 epochs (each one an intermediate value,
with the pruner consulted), the result and the user attributes are stored, the trial is told.
Only the fine-tuning itself is replaced by :func:`_instant_run`, which takes no time, so
``wall time / trials`` is the harness's overhead per trial, with ``workers`` trials at once.
PostgreSQL needs ``$TETHER_TEST_POSTGRES_URL`` (or ``--postgres URL``).

A second table times what the forkserver is for: from ``Launcher.start`` to the real
worker's ``start`` event (data loaded, model built) for a small digits recipe, forked from the
server that has torch imported against a fresh ``python -m finetune.worker``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from collections.abc import Sequence
import os
from pathlib import Path
import platform
import sys
import tempfile
import time
from typing import Any
import uuid

import optuna

from search.driver import Search
from search.driver import create_studies
from search.driver import parse_devices
from search.launcher import Launcher
from search.spec import spec_from_dict
from search.storage import open_storage


ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 10


def _instant_run(
    recipe: dict[str, Any],
    *,
    emit: Callable[[dict[str, Any]], None],
    cache_dir: str | None,
    should_stop: Callable[[], bool],
) -> int:
    """A worker target with the real event stream and no training (module level: picklable)."""
    radius = recipe["constraint"]["radius"]
    score = sum(radius.values()) / len(radius) if isinstance(radius, dict) else float(radius)
    emit({"event": "start", "versions": {}, "groups": list(radius)})
    for epoch in range(1, int(recipe["train"]["epochs"]) + 1):
        if should_stop():
            emit({"event": "stopped", "epoch": epoch})
            return 143
        emit({"event": "epoch", "epoch": epoch, "val_accuracy": min(1.0, score * epoch / 10)})
    emit(
        {
            "event": "result",
            "val_accuracy": min(1.0, score),
            "distances": {},
            "test_accuracy": None,
        }
    )
    return 0


def _spec(name: str, trials: int) -> dict[str, Any]:
    return {
        "name": name,
        "recipe": str(ROOT / "configs" / "digits.yaml"),
        "set": {"train.epochs": EPOCHS},
        "budget": {"n_trials": trials},
        "pruner": {"name": "median", "n_startup_trials": 5},
        "methods": {
            "mars-pgm": {
                "groups": "independent",
                "relative": True,
                "radius": {"low": 0.01, "high": 1.0},
                "head_radius": {"low": 0.5, "high": 30.0},
                "lr": {"low": 1e-5, "high": 1e-2},
            }
        },
    }


def measure(url: str, *, trials: int, workers: int, launcher: Launcher, work: Path) -> float:
    """Seconds per trial for one configuration."""
    name = f"bench-{uuid.uuid4().hex[:8]}"
    spec = spec_from_dict(_spec(name, trials))
    storage = open_storage(url)
    create_studies(spec, storage)
    slots = parse_devices("cpu", workers)
    search = Search(
        spec,
        storage=storage,
        launcher=launcher,
        slots=slots,
        log_dir=work / name,
        target=_instant_run,
    )
    started = time.perf_counter()
    search.run()
    seconds = time.perf_counter() - started
    study = optuna.load_study(study_name=spec.study_name("mars-pgm"), storage=storage)
    assert len(study.trials) == trials
    optuna.delete_study(study_name=study.study_name, storage=storage)
    return seconds / trials


SMALL_RUN = {
    "model": {"name": "digits-cnn", "weights": "digits-source"},
    "data": {"kind": "digits", "shots": 5, "val_shots": 3},
    "train": {"epochs": 1, "batch_size": 25},
}


def startup(mode: str, *, runs: int, work: Path) -> float:
    """Median seconds from ``Launcher.start`` to the real worker's ``start`` event."""
    times = []
    with Launcher(mode=mode) as launcher:  # type: ignore[arg-type]
        for i in range(runs + 1):  # the first fork also starts the server: not counted
            started = time.perf_counter()
            process = launcher.start(SMALL_RUN, device="", log_path=work / f"{mode}-{i}.log")
            first = next(iter(process.events(timeout=120)))
            elapsed = time.perf_counter() - started
            assert first["event"] == "start", first
            for _ in process.events(timeout=120):
                pass
            process.wait()
            if i:
                times.append(elapsed)
    return sorted(times)[len(times) // 2]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    parser.add_argument(
        "--storages",
        nargs="+",
        default=["sqlite", "postgres"],
        choices=["sqlite", "journal", "postgres"],
    )
    parser.add_argument("--startup-runs", type=int, default=5)
    parser.add_argument("--postgres", default=os.environ.get("TETHER_TEST_POSTGRES_URL"))
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}, optuna {optuna.__version__}"
    )
    print(f"{args.trials} trials of {EPOCHS} reported epochs and 5 sampled parameters each\n")
    print("| storage | workers | seconds per trial |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp, Launcher() as launcher:
        work = Path(tmp)
        for kind in args.storages:
            url = {
                "sqlite": f"sqlite:///{work}/bench.db",
                "journal": f"journal:{work}/bench.journal",
                "postgres": args.postgres,
            }[kind]
            if url is None:
                print(f"| {kind} | - | skipped: no URL |")
                continue
            for workers in args.workers:
                per_trial = measure(
                    url, trials=args.trials, workers=workers, launcher=launcher, work=work
                )
                print(f"| {kind} | {workers} | {per_trial:.3f} |", flush=True)
        print("\n| launcher | seconds to the worker's start event (median) |")
        print("|---|---|")
        for mode in ("fork", "subprocess"):
            print(
                f"| {mode} | {startup(mode, runs=args.startup_runs, work=work):.2f} |", flush=True
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
