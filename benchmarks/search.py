"""Throughput and per-trial overhead of the search harness, with workers that do no training.

    python -m benchmarks.search --trials 200 --storages journal postgres --workers 1 2 4 8

Each worker is a separate process, as ``tether worker`` on another machine would be: it opens
its own storage and runs :class:`tether.search.execution.runner.TicketRunner` (the loop of ``tether
worker``) on one slot. Each trial takes the whole path of a real one: a ticket is claimed, 5
parameters are sampled (TPE, a seed per worker), a worker process is forked, it reports 10 epochs
(each an intermediate value, with the median pruner consulted), the result and the user attributes
are stored, the trial is told. Only the fine-tuning is replaced by :func:`_instant_run`, which
takes no time. The workers start and warm up (imports, storage, forkserver) before the clock
starts; the clock stops when the last one has found no ticket left.

Reported per storage and number of workers:

- ``trials/s``: the budget over the wall time;
- ``s per trial``: wall time x workers / trials, what one trial costs a worker;
- ``storage ms per trial``: time spent inside storage calls (summed over the workers'
  threads, heartbeats included) per trial, and how many calls that was.

PostgreSQL needs ``$TETHER_TEST_POSTGRES_URL`` (or ``--postgres URL``); each configuration
gets a new study, deleted afterwards. ``--restart-after S --restart CMD`` runs a shell command
(e.g. ``pg_ctlcluster 15 main restart``) S seconds into every run: the workers must wait for
the server, reconnect and still run the budget exactly (the run fails its checks otherwise).
A second table times what the forkserver is for: from
``Launcher.start`` to the real worker's ``start`` event for a small digits recipe, forked from
the server that has torch imported against a fresh ``python -m tether.finetune.worker``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from collections.abc import Sequence
import functools
import multiprocessing
from multiprocessing.synchronize import Barrier
import os
from pathlib import Path
import platform
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any
import uuid

import optuna

from tether.search.execution.launcher import Launcher
from tether.search.execution.runner import TicketRunner
from tether.search.execution.slots import parse_devices
from tether.search.execution.tickets import enqueue_tickets
from tether.search.samplers import SamplerConfig
from tether.search.samplers import make_sampler
from tether.search.storage import open_storage
from tether.testing.targets import trivial_target


EPOCHS = 10
GROUPS = ("block1", "block2", "block3")


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


def _recipe(index: int, trial: optuna.Trial) -> dict[str, Any]:
    """5 parameters, as ``mars-pgm`` with independent radii on the digits CNN samples them."""
    radius = {g: trial.suggest_float(f"radius.{g}", 0.01, 1.0, log=True) for g in GROUPS}
    return {
        "constraint": {
            "radius": radius,
            "head_radius": trial.suggest_float("head_radius", 0.5, 30.0, log=True),
        },
        "train": {"epochs": EPOCHS, "lr": trial.suggest_float("lr", 1e-5, 1e-2, log=True)},
    }


class _Timed:
    """Counts the calls to a storage's methods and the seconds spent in them (all threads)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self._lock = threading.Lock()

    def wrap(self, target: object, names: Sequence[str]) -> None:
        for name in names:
            method = getattr(target, name, None)
            if callable(method):
                setattr(target, name, self._timed(method))

    def _timed(self, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds += time.perf_counter() - started
                    self.calls += 1

        return timed


def _storage_methods(storage: object) -> list[str]:
    return [
        name
        for name in dir(optuna.storages.BaseStorage)
        if not name.startswith("__") and callable(getattr(storage, name, None))
    ] + ["record_heartbeat", "_get_stale_trial_ids"]


def _worker(url: str, name: str, number: int, start: Barrier, work: str, results: Any) -> None:
    """One worker process: warm up, wait for the start, run tickets until none is left."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (the per-trial lines: not timed output)
    storage = open_storage(url)
    study = optuna.load_study(
        study_name=name,
        storage=storage,
        sampler=make_sampler(  # Optuna's start-up, as when RESULTS.md was measured
            SamplerConfig(name="tpe", seed=0, n_startup_trials=10), offset=number, n_trials=10
        ),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5),
    )
    timed = _Timed()
    timed.wrap(study._storage, _storage_methods(study._storage))
    backend = getattr(study._storage, "_backend", study._storage)
    timed.wrap(backend, ["claim_waiting", "set_trial_user_attrs"])
    with Launcher(preload=()) as launcher:
        log = Path(work) / "warm.log"
        warm = launcher.start({}, device="", log_path=log, target=trivial_target)
        for _ in warm.events(timeout=60):
            pass
        warm.wait()
        runner = TicketRunner(
            [study],
            recipe=_recipe,
            launcher=launcher,
            slots=parse_devices("cpu", 1),
            log_dir=Path(work) / "logs",
            target=_instant_run,
        )
        start.wait()
        runner.run()
    results.put((runner.done, timed.seconds, timed.calls))


def measure(
    url: str,
    *,
    trials: int,
    workers: int,
    work: Path,
    during: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Throughput and storage time for ``workers`` processes on a new study of ``trials``;
    ``during`` runs in a thread once the clock has started (a fault to survive)."""
    name = f"bench-{uuid.uuid4().hex[:8]}"
    storage = open_storage(url)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    enqueue_tickets(study, n_trials=trials)
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(workers + 1)
    results = context.Queue()
    processes = [
        context.Process(target=_worker, args=(url, name, i, start, str(work), results))
        for i in range(workers)
    ]
    for process in processes:
        process.start()
    start.wait()
    started = time.perf_counter()
    if during is not None:
        threading.Thread(target=during, daemon=True).start()
    done = [results.get() for _ in processes]
    seconds = time.perf_counter() - started
    for process in processes:
        process.join()
    study = optuna.load_study(study_name=name, storage=open_storage(url))  # a fresh pool
    finished = study.get_trials(deepcopy=False)
    assert len(finished) == trials, "a ticket was lost or run twice"
    assert sum(d[0] for d in done) == trials
    assert all(t.state.is_finished() for t in finished)
    optuna.delete_study(study_name=name, storage=storage)
    return {
        "trials_per_second": trials / seconds,
        "seconds_per_trial": seconds * workers / trials,
        "storage_ms_per_trial": 1000 * sum(d[1] for d in done) / trials,
        "storage_calls_per_trial": sum(d[2] for d in done) / trials,
    }


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
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument(
        "--storages",
        nargs="+",
        default=["journal", "postgres"],
        choices=["sqlite", "journal", "postgres"],
        help="sqlite is one process: it is measured with 1 worker only",
    )
    parser.add_argument("--startup-runs", type=int, default=5, help="0: skip that table")
    parser.add_argument("--postgres", default=os.environ.get("TETHER_TEST_POSTGRES_URL"))
    parser.add_argument("--restart", default=None, help="a shell command run during each run")
    parser.add_argument("--restart-after", type=float, default=3.0, metavar="SECONDS")
    args = parser.parse_args(argv)
    during = None
    if args.restart:
        command, delay = args.restart, args.restart_after

        def during() -> None:
            time.sleep(delay)
            began = time.perf_counter()
            subprocess.run(command, shell=True, check=True)
            print(f"  ({command!r} took {time.perf_counter() - began:.1f} s)", flush=True)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}, optuna {optuna.__version__}"
    )
    print(f"{args.trials} trials of {EPOCHS} reported epochs and 5 sampled parameters each\n")
    print("| storage | workers | trials/s | s per trial | storage ms per trial | storage calls |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for kind in args.storages:
            url = {
                "sqlite": f"sqlite:///{work}/bench.db",
                "journal": f"journal:{work}/bench.journal",
                "postgres": args.postgres,
            }[kind]
            if url is None:
                print(f"| {kind} | - | skipped: no URL | | | |")
                continue
            for workers in args.workers:
                if kind == "sqlite" and workers > 1:
                    continue
                m = measure(url, trials=args.trials, workers=workers, work=work, during=during)
                print(
                    f"| {kind} | {workers} | {m['trials_per_second']:.1f} "
                    f"| {m['seconds_per_trial']:.3f} | {m['storage_ms_per_trial']:.0f} "
                    f"| {m['storage_calls_per_trial']:.0f} |",
                    flush=True,
                )
        if args.startup_runs:
            print("\n| launcher | seconds to the worker's start event (median) |")
            print("|---|---|")
            for mode in ("fork", "subprocess"):
                seconds = startup(mode, runs=args.startup_runs, work=work)
                print(f"| {mode} | {seconds:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
