"""The cost of a radius search: compute until the MARS protocol's best, and what it returns.

    python -m benchmarks.search_cost --jobs 2                 # resumable; hours of CPU
    python -m benchmarks.search_cost --report                 # the tables, from results.jsonl
    python -m benchmarks.search_cost --quick --out out/q      # smoke run: seconds

Each (variant, strategy, seed) is one search of ``mars-pgm``'s two radii (``radius`` for every
pretrained layer, ``head_radius``) on the digits task (configs/digits.yaml at ``--epochs``: 80,
as studies/digits.yaml), run by ``tether run`` into its own SQLite file under ``--out``, with
the strategy's sampler seeded by the seed. Variants: ``noisy`` (the recipe's 40 % symmetric
label noise) and ``clean`` (``data.noise=none``). Strategies (:data:`STRATEGIES`) are spec
patches: the ``reference`` is the MARS code's protocol (independent TPE, 20 trials, full
epochs, no pruning, absolute radii); every other starts from Tether's own search of this task
(radii relative to each row's pretrained norm, Tether's default sampler, no pruning: ``tpe``)
and changes what its name says. The ``extra`` strategies run only when ``--strategies`` names
them; one that starts from another search's study runs once that search is recorded. After a
search its trials (state, value, device-seconds, epochs run, parameters) become one line of
``results.jsonl``, and the configuration it returns (its best complete trial, what ``tether
evaluate`` re-runs) is tested over ``--test-seeds`` seeds by ``tether evaluate``; a recipe
tested once is not tested again (``tests.jsonl``). A (variant, strategy, seed) already in
``results.jsonl`` is skipped, so a run stopped at any point goes on where it stopped; an
unfinished search is started again from nothing.

The figure of merit (:func:`cost_to_reach`): the device-seconds, trials and epochs a search
spent until its best validation accuracy was within :data:`TOLERANCE` of the reference's
final best (the median over the reference's seeds), trials in the order they ran, every
trial's cost counted (pruned and failed ones, and a warm start's source run) but only the
searched method's complete trials' values. ``--report`` gives its median and range over the
seeds, its share of the reference's whole compute (the goal: 25 % or less), the final best
val, the test accuracy of the returned configuration, and the median best-so-far curve.

The absolute radius range is the relative one (studies/digits.yaml: 0.02 to 1.0) times 6.73,
the geometric mean of the pretrained digits CNN's mean row l1 norms in its three blocks (2.63,
8.91, 12.98): the same width on a log scale, centred on the same radii.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
import concurrent.futures
import contextlib
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
import fcntl
import json
import math
import os
from pathlib import Path
import statistics
import subprocess
import sys
import time
from typing import TYPE_CHECKING
from typing import Any


if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "digits.yaml"
METHOD = "mars-pgm"
TOLERANCE = 0.01
"""Within one point (accuracies are fractions): the reference's best is reached."""
RADIUS = (0.02, 1.0)
HEAD_RADIUS = (0.5, 30.0)
KNOWN_POINT = {"radius": 0.1, "head_radius": 3.0}
"""The recipe's radii (configs/digits.yaml), relative: the hand search's best."""
ABSOLUTE_SCALE = 6.73
"""Mean pretrained row l1 norm of the digits CNN's blocks, geometric mean (module docstring)."""
START_TOP = 3
"""How many of the other variant's best trials ``warm-study`` starts from."""
BUDGET_SHARES = (0.1, 0.25, 0.5, 1.0)
"""The curve table's columns: shares of the reference's whole compute."""

VARIANTS: dict[str, dict[str, Any]] = {
    "noisy": {},
    "clean": {"data.noise": "none", "data.noise_rate": 0.0},
}
"""Recipe overrides of each variant (``noisy``: the recipe as it is)."""
OTHER_VARIANT = {"noisy": "clean", "clean": "noisy"}
"""The other task a ``start_from`` strategy starts from."""


@dataclass(frozen=True, order=True)
class Job:
    """One search: (variant, strategy, seed), its name and where its storage is."""

    variant: str
    strategy: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.variant}.{self.strategy}.s{self.seed}"

    @property
    def study(self) -> str:
        return f"cost.{self.name}/{METHOD}"

    def storage(self, out: Path) -> Path:
        return out / "storages" / f"{self.name}.db"

    def source(self) -> Job | None:
        """The search this one starts from (its strategy's ``start_from``), if any."""
        start = STRATEGY_NAMES[self.strategy].start_from
        return None if start is None else Job(OTHER_VARIANT[self.variant], start, self.seed)

    @classmethod
    def parse(cls, name: str) -> Job:
        variant, strategy, seed = name.split(".")
        return cls(variant, strategy, int(seed.removeprefix("s")))


OPTUNA_TPE = {"name": "tpe", "n_startup_trials": 10}
"""Tether's ``tpe`` with Optuna's own start-up of 10 trials: the sampler of the strategies below
that change something else (Tether's default sizes the start-up to the budget)."""


@dataclass(frozen=True)
class Strategy:
    """One way of searching, as a patch of the spec.

    Attributes:
        name: the row of the tables.
        description: what it changes, for ``--list``.
        sampler: ``sampler:`` of the spec, but the seed; None: the spec names only the seed
            (Tether's default sampler).
        pruner: ``pruner:`` of the spec; None: the spec names none (Tether's default).
        warmup_share: the median pruner's ``n_warmup_steps`` as a share of the epochs.
        startup_share: the sampler's ``n_startup_trials`` as a share of the trials (at least 1).
        relative: radii relative to each row's pretrained norm (else absolute, rescaled
            ranges, see :data:`ABSOLUTE_SCALE`).
        options: more keys of the ``mars-pgm`` entry (``enqueue``, ``warm_start``, ...).
        sources: other methods of the spec, run first; their trials count as compute.
        start_from: a strategy whose search of the other variant, same seed, this one starts
            from (``start_from:``, its best :data:`START_TOP` trials); that search's compute
            is not counted (it was spent on the other task), and it must be recorded first.
        seed_offset: added to the sampler's seed. Samplers seeded alike draw the same
            start-up points, so a search that starts from another of the same seed would
            start from points its own start-up draws anyway.
        extra: run only when ``--strategies`` names it.
    """

    name: str
    description: str
    sampler: Mapping[str, Any] | None = field(default_factory=lambda: dict(OPTUNA_TPE))
    pruner: Mapping[str, Any] | None = field(default_factory=lambda: {"name": "none"})
    warmup_share: float | None = None
    startup_share: float | None = None
    relative: bool = True
    options: Mapping[str, Any] = field(default_factory=dict)
    sources: Mapping[str, Any] = field(default_factory=dict)
    start_from: str | None = None
    seed_offset: int = 0
    extra: bool = False

    def spec_data(
        self,
        *,
        seed: int,
        n_trials: int,
        epochs: int,
        absolute: tuple[float, float],
        source: Mapping[str, Any],
    ) -> dict[str, Any]:
        """The ``sampler``, ``pruner`` and ``methods`` of the strategy's spec; ``source``: the
        ``study`` and ``storage`` it starts from (with :attr:`start_from`)."""
        low, high = RADIUS if self.relative else absolute
        entry = {
            "groups": "shared",
            "relative": self.relative,
            "radius": {"low": low, "high": high, "log": True},
            "head_radius": {"low": HEAD_RADIUS[0], "high": HEAD_RADIUS[1], "log": True},
            **self.options,
        }
        if self.start_from is not None:
            entry["start_from"] = [{**source, "top": START_TOP}]
        seed += self.seed_offset
        data: dict[str, Any] = {
            "sampler": {**(self.sampler or {}), "seed": seed},
            "methods": {**self.sources, METHOD: entry},
        }
        if self.startup_share is not None:
            data["sampler"]["n_startup_trials"] = max(1, int(self.startup_share * n_trials))
        if self.pruner is not None:
            data["pruner"] = dict(self.pruner)
            if self.warmup_share is not None:
                data["pruner"]["n_warmup_steps"] = round(self.warmup_share * epochs)
        return data


STRATEGIES: tuple[Strategy, ...] = (
    Strategy(
        "reference",
        "the MARS code's protocol: independent TPE (10 random start-up trials), no pruning, "
        "one absolute radius",
        sampler={**OPTUNA_TPE, "multivariate": False},
        relative=False,
    ),
    Strategy(
        "relative",
        "the reference with radii relative to each row's pretrained norm",
        sampler={**OPTUNA_TPE, "multivariate": False},
    ),
    Strategy(
        "tpe",
        "Optuna's multivariate TPE (10 start-up trials), relative radii, no pruning: "
        "the base of the strategies below",
    ),
    Strategy(
        "defaults",
        "a spec that names no sampler and no pruner: Tether's defaults",
        sampler=None,
        pruner=None,
    ),
    Strategy(
        "median-no-warmup",
        "tpe with median pruning after 5 trials from the first epoch (the defaults until "
        "this benchmark)",
        pruner={"name": "median", "n_startup_trials": 5, "n_warmup_steps": 0},
    ),
    Strategy(
        "median",
        "tpe with median pruning after 5 trials, none before a quarter of the epochs",
        pruner={"name": "median", "n_startup_trials": 5},
        warmup_share=0.25,
    ),
    Strategy("hyperband", "tpe with Hyperband over epochs", pruner={"name": "hyperband"}),
    Strategy(
        "gp",
        "the Gaussian-process sampler (10 start-up trials)",
        sampler={"name": "gp", "n_startup_trials": 10},
    ),
    Strategy(
        "tpe-multivariate",
        "multivariate TPE with a start-up of a quarter of the budget",
        sampler={"name": "tpe"},
        startup_share=0.25,
    ),
    Strategy(
        "warm-known",
        "tpe, the recipe's radii (0.1 / 3.0) as the first trial",
        options={"enqueue": [KNOWN_POINT]},
    ),
    Strategy(
        "warm-ftp",
        "tpe, FTP's learned radii as the first trial (its one run counts)",
        options={"warm_start": "ftp"},
        sources={"ftp": {}},
    ),
    Strategy(
        "random",
        "random search: what the MARS code's hyperopt TPE was for 20 trials "
        "(n_startup_jobs = 20), absolute radii",
        sampler={"name": "random"},
        relative=False,
        extra=True,
    ),
    Strategy(
        "warm-study",
        "tpe, with the best 3 trials of the same seed's tpe search on the other variant "
        "first (start_from; its compute is not counted), sampler seed + 1000",
        start_from="tpe",
        seed_offset=1000,
        extra=True,
    ),
)
STRATEGY_NAMES = {s.name: s for s in STRATEGIES}


@dataclass(frozen=True)
class Setup:
    """What the numbers of one output folder mean; a folder holds one setup."""

    n_trials: int = 20
    epochs: int = 80
    val_shots: int = 10
    test_seeds: int = 3
    absolute: tuple[float, float] = (RADIUS[0] * ABSOLUTE_SCALE, RADIUS[1] * ABSOLUTE_SCALE)

    def spec(self, job: Job, out: Path) -> dict[str, Any]:
        """The study spec of one search (JSON, which YAML reads); storages under ``out``."""
        source = job.source()
        return {
            "name": job.study.split("/")[0],
            "recipe": str(RECIPE),
            "set": {
                "train.epochs": self.epochs,
                "data.val_shots": self.val_shots,
                **VARIANTS[job.variant],
            },
            "budget": {"n_trials": self.n_trials},
            "evaluation": {"n_seeds": self.test_seeds, "refit": False},
            "artifacts": False,
            **STRATEGY_NAMES[job.strategy].spec_data(
                seed=job.seed,
                n_trials=self.n_trials,
                epochs=self.epochs,
                absolute=self.absolute,
                source={}
                if source is None
                else {"study": source.study, "storage": f"sqlite:///{source.storage(out)}"},
            ),
        }


QUICK = Setup(n_trials=3, epochs=5, test_seeds=1)
QUICK_STRATEGIES = ("reference", "defaults")


# -- the figure of merit ---------------------------------------------------------------------


@dataclass(frozen=True)
class Cost:
    """Compute spent: device-seconds, trials and epochs."""

    seconds: float
    trials: int
    epochs: int


def ran_in_order(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A record's trials (every study's) in the order they started."""
    return sorted(record["trials"], key=lambda t: (t["started"] or "", t["study"], t["number"]))


def counts(trial: Mapping[str, Any]) -> bool:
    """Whether a trial's value is a configuration the search could return."""
    return trial["study"] == METHOD and trial["state"] == "COMPLETE" and trial["value"] is not None


def cost_to_reach(trials: Iterable[Mapping[str, Any]], target: float) -> Cost | None:
    """The compute spent until a trial reached ``target`` - :data:`TOLERANCE`; None if none.

    ``trials`` in the order they ran; each costs its ``seconds`` and ``epochs``, the one
    that reaches included; only :func:`counts` trials can reach.

    Example:
        >>> run = {"study": "mars-pgm", "seconds": 2.0}
        >>> pruned = {**run, "state": "PRUNED", "value": 0.95, "epochs": 3}
        >>> t = [pruned, {**run, "state": "COMPLETE", "value": 0.89, "epochs": 80}]
        >>> cost_to_reach(t, 0.90)
        Cost(seconds=4.0, trials=2, epochs=83)
        >>> cost_to_reach(t, 0.92) is None
        True
    """
    spent = Cost(0.0, 0, 0)
    for trial in trials:
        spent = Cost(
            spent.seconds + trial["seconds"], spent.trials + 1, spent.epochs + trial["epochs"]
        )
        if counts(trial) and trial["value"] >= target - TOLERANCE - 1e-9:
            return spent
    return None


def final_best(trials: Iterable[Mapping[str, Any]]) -> float | None:
    """The best value of the configurations a search could return; None if it has none."""
    return max((t["value"] for t in trials if counts(t)), default=None)


def best_by(trials: Sequence[Mapping[str, Any]], seconds: float) -> float | None:
    """The best :func:`counts` value among the trials done within ``seconds`` of compute."""
    spent, best = 0.0, None
    for trial in trials:
        spent += trial["seconds"]
        if spent > seconds + 1e-9:
            break
        if counts(trial) and (best is None or trial["value"] > best):
            best = trial["value"]
    return best


def median_range(values: Sequence[float | None]) -> tuple[float, float, float]:
    """Median, min and max; None (nothing reached yet) sorts below every number.

    Example:
        >>> median_range([3.0, None, 1.0, math.inf])
        (2.0, -inf, inf)
    """
    numbers = sorted(-math.inf if v is None else v for v in values)
    if not numbers:
        return math.nan, math.nan, math.nan
    return statistics.median(numbers), numbers[0], numbers[-1]


# -- one search ------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """The output folder's lock: parallel jobs append to the same files."""
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (none if it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_jsonl(out: Path, name: str, record: Mapping[str, Any]) -> None:
    """Append one record to ``out/name`` under the folder's lock (jobs run in parallel)."""
    with _locked(out), open(out / name, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def _tether(argv: Sequence[str]) -> None:
    from tether.cli import main

    code = main(list(argv))
    if code != 0:
        raise RuntimeError(f"tether {' '.join(argv)} exited with {code}")


def trial_rows(url: str) -> list[dict[str, Any]]:
    """Every trial of every study in a storage, as the record keeps it: ``seconds`` is the
    trial's device-seconds (its worker's wall time), ``train_seconds`` its epochs' own."""
    import optuna

    rows = []
    for name in optuna.get_all_study_names(storage=url):
        for t in optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False):
            curve = t.user_attrs.get("curve", [])
            rows.append(
                {
                    "study": name.rsplit("/", 1)[1],
                    "number": t.number,
                    "state": t.state.name,
                    "value": t.value,
                    "seconds": float(t.user_attrs.get("seconds", 0.0)),
                    "epochs": len(curve),
                    "train_seconds": sum(float(e.get("seconds", 0.0)) for e in curve),
                    "params": t.params,
                    "started": None if t.datetime_start is None else t.datetime_start.isoformat(),
                }
            )
    return rows


def recorded_spec(spec: Mapping[str, Any], out: Path) -> dict[str, Any]:
    """``spec`` as its record keeps it, with no machine's paths: the recipe relative to the
    repository, a ``start_from`` storage relative to ``out``."""
    entry = dict(spec["methods"][METHOD])
    if "start_from" in entry:
        entry["start_from"] = [
            {
                **s,
                "storage": "sqlite:///"
                + str(Path(s["storage"].removeprefix("sqlite:///")).relative_to(out)),
            }
            for s in entry["start_from"]
        ]
    methods = {**spec["methods"], METHOD: entry}
    return {**spec, "recipe": str(RECIPE.relative_to(ROOT)), "methods": methods}


def restore_source(out: Path, job: Job) -> Path | None:
    """Write the storage of ``job``'s source search from its record, if the file is missing.

    Storages are not committed, so in a later checkout the search a ``start_from`` strategy
    starts from exists only as its record. The record keeps what ``start_from:`` reads: every
    complete trial's parameters and value in trial order (so equal values rank as they did),
    the ranges of the parameters and whether the radii were relative. The file appears whole or
    not at all (written aside, then renamed). Returns the path written, or None.
    """
    import optuna
    from optuna.distributions import BaseDistribution
    from optuna.distributions import FloatDistribution

    from tether.search.execution.studies import SPEC_ATTR

    source = job.source()
    if source is None or source.storage(out).exists():
        return None
    (record,) = [
        r
        for r in read_jsonl(out / "results.jsonl")
        if Job(r["variant"], r["strategy"], r["seed"]) == source
    ]
    entry = record["spec"]["methods"][METHOD]
    ranges: dict[str, BaseDistribution] = {
        name: FloatDistribution(entry[name]["low"], entry[name]["high"], log=entry[name]["log"])
        for name in ("radius", "head_radius")
    }
    path = source.storage(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = path.with_name(f"{path.name}.{os.getpid()}.part")
    aside.unlink(missing_ok=True)
    study = optuna.create_study(
        study_name=source.study, storage=f"sqlite:///{aside}", direction="maximize"
    )
    study.set_user_attr(SPEC_ATTR, {"name": record["spec"]["name"], "methods": {METHOD: entry}})
    for t in sorted(record["trials"], key=lambda t: t["number"]):
        if t["study"] == METHOD and t["state"] == "COMPLETE" and t["value"] is not None:
            study.add_trial(
                optuna.trial.create_trial(
                    params=t["params"], distributions=ranges, value=t["value"]
                )
            )
    aside.rename(path)
    return path


def run_search(out: Path, setup: Setup, job: Job, cache_dir: str | None) -> dict[str, Any]:
    """Search, read the trials, test the returned configuration; the record (appended)."""
    import optuna

    from tether.search.execution.studies import best_trial

    os.environ.setdefault("TETHER_NUM_THREADS", "1")
    spec_path, db = out / "specs" / f"{job.name}.yaml", job.storage(out)
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    db.parent.mkdir(parents=True, exist_ok=True)
    db.unlink(missing_ok=True)  # an unfinished search starts again from nothing
    restore_source(out, job)
    spec = setup.spec(job, out)
    spec_path.write_text(json.dumps(spec, indent=1))
    url = f"sqlite:///{db}"
    flags = ["--devices", "cpu", "--log-dir", str(out / "logs" / job.name)]
    flags += [] if cache_dir is None else ["--cache-dir", cache_dir]
    started = time.monotonic()
    _tether(["--storage", url, "run", str(spec_path), "--no-evaluate", "--no-report", *flags])
    searched = time.monotonic() - started
    best = best_trial(optuna.load_study(study_name=job.study, storage=url))
    record = {
        "variant": job.variant,
        "strategy": job.strategy,
        "seed": job.seed,
        "spec": recorded_spec(spec, out),
        "trials": trial_rows(url),
        "best": None
        if best is None
        else {"number": best.number, "value": best.value, "params": best.params},
        "test": None
        if best is None
        else score_returned(out, best, url, spec_path, flags, job.name),
        "search_wall_seconds": searched,
        "wall_seconds": time.monotonic() - started,
    }
    append_jsonl(out, "results.jsonl", record)
    return record


def score_returned(
    out: Path, best: FrozenTrial, url: str, spec_path: Path, flags: Sequence[str], job: str
) -> dict[str, Any]:
    """The test accuracies of ``best``'s recipe by ``tether evaluate`` (the spec's seeds), or
    those of the same recipe tested before (``cached``)."""
    import optuna

    from tether.jsondata import json_digest
    from tether.jsondata import json_safe

    spec = json.loads(spec_path.read_text())
    seeds = spec["evaluation"]["n_seeds"]
    key = json_digest(json_safe({"recipe": best.user_attrs["recipe"], "seeds": seeds}))
    known = {r["key"]: r for r in read_jsonl(out / "tests.jsonl")}
    if key in known:
        return {**known[key], "cached": True}
    began = time.monotonic()
    _tether(["--storage", url, "evaluate", str(spec_path), "--methods", METHOD, *flags])
    study = optuna.load_study(study_name=f"{spec['name']}/{METHOD}", storage=url)
    summary = study.user_attrs["tether:evaluation"]
    if summary["best_trial"] != best.number:
        raise RuntimeError(f"evaluate tested trial {summary['best_trial']}, not {best.number}")
    test = {
        "key": key,
        "accuracy": summary["test_accuracy"],
        "seconds": time.monotonic() - began,
        "first": job,
    }
    append_jsonl(out, "tests.jsonl", test)
    return {**test, "cached": False}


# -- many searches ---------------------------------------------------------------------------


def load_setup(out: Path, wanted: Setup | None) -> Setup:
    """The folder's setup, written on first use; another one is refused (use another folder)."""
    path = out / "setup.json"
    if path.exists():
        data = json.loads(path.read_text())
        found = Setup(**{**data, "absolute": tuple(data["absolute"])})
        if wanted is not None and wanted != found:
            raise SystemExit(f"{out} holds another setup ({found}); use another --out")
        return found
    if wanted is None:
        raise SystemExit(f"{out} has no setup.json: nothing was run there")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(wanted), indent=1))
    return wanted


def pending(
    out: Path, variants: Sequence[str], strategies: Sequence[str], seeds: int
) -> list[Job]:
    """The searches not yet recorded, seed by seed (a slice gives every strategy a seed)."""
    done = {Job(r["variant"], r["strategy"], r["seed"]) for r in read_jsonl(out / "results.jsonl")}
    wanted = [Job(v, s, k) for k in range(seeds) for v in variants for s in strategies]
    return [job for job in wanted if job not in done]


def startable(jobs: Sequence[Job], out: Path) -> list[Job]:
    """The jobs whose source search (a ``start_from`` strategy's) is recorded, or that have
    none."""
    done = {Job(r["variant"], r["strategy"], r["seed"]) for r in read_jsonl(out / "results.jsonl")}
    return [job for job in jobs if job.source() is None or job.source() in done]


def run_all(
    out: Path, jobs: Sequence[Job], *, parallel: int, deadline: float, cache_dir: str | None
) -> int:
    """Run ``jobs`` as child processes, ``parallel`` at a time, none started after the
    monotonic time ``deadline``; the number that failed."""
    env = {
        **os.environ,
        "TETHER_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }
    (out / "logs").mkdir(parents=True, exist_ok=True)

    def one(index: int, job: Job) -> bool:
        if time.monotonic() > deadline:
            return True
        argv = [sys.executable, "-m", "benchmarks.search_cost", "--out", str(out)]
        argv += ["--job", job.name, *([] if cache_dir is None else ["--cache-dir", cache_dir])]
        began = time.monotonic()
        with open(out / "logs" / f"{job.name}.log", "w") as log:
            code = subprocess.run(argv, cwd=ROOT, env=env, stdout=log, stderr=log).returncode
        status = "done" if code == 0 else f"FAILED (exit {code}; see logs/{job.name}.log)"
        print(
            f"[{index + 1}/{len(jobs)}] {job.name}: {status} in {time.monotonic() - began:.0f} s",
            flush=True,
        )
        return code == 0

    with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
        results = list(pool.map(one, range(len(jobs)), jobs))
    return results.count(False)


def run_pending(
    out: Path,
    wanted: Callable[[], list[Job]],
    *,
    parallel: int,
    stop_after: float | None,
    cache_dir: str | None,
) -> int:
    """Run the ``wanted()`` searches, those that start from another after it (a second wave);
    the exit code: 1 if a search failed."""
    deadline = math.inf if stop_after is None else time.monotonic() + stop_after
    print(f"{out}: {len(wanted())} searches to run, {parallel} at a time", flush=True)
    failed = 0
    while not failed and time.monotonic() <= deadline:
        jobs = startable(wanted(), out)
        if not jobs:
            break
        failed = run_all(out, jobs, parallel=parallel, deadline=deadline, cache_dir=cache_dir)
    left = wanted()
    waiting = [job.name for job in left if job not in startable(left, out)]
    if left:
        print(f"{len(left)} searches left ({failed} failed): run the command again", flush=True)
    if waiting:
        print(f"waiting for their source search: {', '.join(waiting)}", flush=True)
    return 1 if failed else 0


# -- the report ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """What a variant's searches are measured against: the reference's final best val
    (median over its seeds) and its whole search's device-seconds (median)."""

    best: float
    seconds: float
    seeds: int

    @classmethod
    def of(cls, records: Sequence[Mapping[str, Any]]) -> Reference | None:
        """From the reference's records; None if none has a complete trial."""
        searches = [ran_in_order(r) for r in records]
        bests = [b for b in map(final_best, searches) if b is not None]
        if not bests:
            return None
        seconds = statistics.median(sum(t["seconds"] for t in s) for s in searches)
        return cls(statistics.median(bests), seconds, len(bests))


@dataclass(frozen=True)
class Summary:
    """One strategy's searches of one variant, one entry per search seed."""

    strategy: str
    to_target: list[Cost | None]
    final: list[float | None]
    tests: list[float]
    total: list[float]
    searches: list[list[dict[str, Any]]] = field(repr=False)

    @classmethod
    def of(cls, strategy: str, records: Sequence[Mapping[str, Any]], target: float) -> Summary:
        searches = [ran_in_order(r) for r in records]
        tests = [
            statistics.mean(r["test"]["accuracy"])
            for r in records
            if r["test"] and all(a is not None for a in r["test"]["accuracy"])
        ]
        return cls(
            strategy,
            to_target=[cost_to_reach(s, target) for s in searches],
            final=[final_best(s) for s in searches],
            tests=tests,
            total=[sum(t["seconds"] for t in s) for s in searches],
            searches=searches,
        )

    def spent(self, what: str) -> list[float]:
        """Seconds, trials or epochs to the target per seed; inf where it was not reached."""
        return [math.inf if c is None else float(getattr(c, what)) for c in self.to_target]

    def share(self, reference: Reference) -> float:
        """The median device-seconds to the target over the reference's whole search."""
        return median_range(self.spent("seconds"))[0] / reference.seconds

    def best_at(self, seconds: float) -> float:
        """The median over seeds of the best val within ``seconds`` (-inf: none yet)."""
        return median_range([best_by(s, seconds) for s in self.searches])[0]


def summaries(
    records: Sequence[Mapping[str, Any]], variant: str
) -> tuple[Reference | None, list[Summary]]:
    """The reference and each strategy's summary of one variant (first record of a seed)."""
    chosen: dict[tuple[str, int], Mapping[str, Any]] = {}
    for r in records:
        if r["variant"] == variant:
            chosen.setdefault((r["strategy"], r["seed"]), r)
    by_strategy = {
        s.name: [r for (name, _), r in sorted(chosen.items()) if name == s.name]
        for s in STRATEGIES
    }
    reference = Reference.of(by_strategy["reference"])
    if reference is None:
        return None, []
    return reference, [
        Summary.of(name, found, reference.best) for name, found in by_strategy.items() if found
    ]


def _num(value: float, digits: int = 0, scale: float = 1.0) -> str:
    if math.isinf(value):
        return "∞" if value > 0 else "-"
    return f"{value * scale:.{digits}f}"


def _spread(values: Sequence[float | None], digits: int = 0, scale: float = 1.0) -> str:
    """``median [min–max]``; a median that is infinite (not reached) says so."""
    if not values:
        return "-"
    middle, low, high = median_range(values)
    first = "not reached" if middle == math.inf else _num(middle, digits, scale)
    return f"{first} [{_num(low, digits, scale)}–{_num(high, digits, scale)}]"


def _overhead(summaries: Sequence[Summary]) -> str:
    """The seconds each search's first trial and its others spent outside their epochs."""
    first, others = [], []
    for summary in summaries:
        for trials in summary.searches:
            spare = [t["seconds"] - t.get("train_seconds", 0.0) for t in trials]
            first += spare[:1]
            others += spare[1:]
    if not first or not others:
        return ""
    return (
        f"Seconds of a trial outside its epochs (median): {statistics.median(first):.1f} for "
        f"a search's first trial, {statistics.median(others):.1f} for the others."
    )


def report(records: Sequence[Mapping[str, Any]], setup: Setup) -> str:
    """The markdown tables of ``records`` (see the module docstring)."""
    lines = [
        f"{setup.n_trials} trials of {setup.epochs} epochs; val {setup.val_shots} images per "
        f"class; test over {setup.test_seeds} seeds; medians [min–max] over search seeds.",
    ]
    shares = " | ".join(f"best val % at {100 * s:.0f} % of reference" for s in BUDGET_SHARES)
    for variant in [v for v in VARIANTS if any(r["variant"] == v for r in records)]:
        reference, rows = summaries(records, variant)
        lines += ["", f"### {variant}", ""]
        if reference is None:
            lines.append("No reference search yet: nothing to measure against.")
            continue
        lines += [
            f"Reference: final best val {100 * reference.best:.1f} % (median of "
            f"{reference.seeds} seeds), so the target is "
            f"{100 * (reference.best - TOLERANCE):.1f} %; its whole search "
            f"{reference.seconds:.0f} device-s (median).",
            "",
            "| strategy | seeds | reached | device-s to target | share of reference | "
            "trials to target | epochs to target | final best val % | test % of returned | "
            "device-s in all |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in rows:
            share = row.share(reference)
            reached = sum(c is not None for c in row.to_target)
            lines.append(
                f"| {row.strategy} | {len(row.final)} | {reached}/{len(row.final)} | "
                f"{_spread(row.spent('seconds'))} | "
                f"{'not reached' if math.isinf(share) else f'{100 * share:.0f} %'} | "
                f"{_spread(row.spent('trials'))} | {_spread(row.spent('epochs'))} | "
                f"{_spread(row.final, 1, 100)} | {_spread(row.tests, 1, 100)} | "
                f"{_spread(row.total)} |"
            )
        lines += ["", f"| strategy | {shares} |", "|---|" + "---|" * len(BUDGET_SHARES)]
        for row in rows:
            cells = [_num(row.best_at(s * reference.seconds), 1, 100) for s in BUDGET_SHARES]
            lines.append(f"| {row.strategy} | {' | '.join(cells)} |")
        overhead = _overhead(rows)
        lines += ["", overhead] if overhead else []
    return "\n".join(lines)


def write_figure(records: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Median best val against cumulative device-seconds, per variant and strategy (plotly);
    None without plotly."""
    try:
        import plotly.graph_objects as go
    except ImportError:
        return None
    figure = go.Figure()
    for variant in VARIANTS:
        for row in summaries(records, variant)[1]:
            ends = {
                sum(t["seconds"] for t in s[: i + 1]) for s in row.searches for i in range(len(s))
            }
            grid = sorted({0.0, *ends})
            values = [row.best_at(x) for x in grid]
            figure.add_scatter(
                x=grid,
                y=[None if math.isinf(v) else 100 * v for v in values],
                mode="lines",
                line_shape="hv",
                name=f"{variant} {row.strategy}",
            )
    figure.update_layout(
        xaxis_title="device-seconds", yaxis_title="best val % (median over seeds)"
    )
    figure.write_html(path, include_plotlyjs=True)  # offline: plotly.js inside
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default: benchmarks/search-cost (its records are committed)",
    )
    parser.add_argument(
        "--variants", nargs="+", choices=list(VARIANTS), default=None, help="default: all"
    )
    parser.add_argument(
        "--strategies",
        nargs="+",
        choices=list(STRATEGY_NAMES),
        default=None,
        help="default: all but the extra ones (random)",
    )
    parser.add_argument("--seeds", type=int, default=None, help="sampler seeds 0..N-1 (5)")
    parser.add_argument("--jobs", type=int, default=1, help="searches at once")
    parser.add_argument("--trials", type=int, default=Setup.n_trials)
    parser.add_argument("--epochs", type=int, default=Setup.epochs)
    parser.add_argument("--val-shots", type=int, default=Setup.val_shots, help="per class")
    parser.add_argument("--test-seeds", type=int, default=Setup.test_seeds)
    parser.add_argument(
        "--stop-after",
        type=float,
        default=None,
        metavar="MINUTES",
        help="start no search after this long (a slice of the run)",
    )
    parser.add_argument("--cache-dir", default=None, help="tether's cache (the source network)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 3 trials of 5 epochs, 1 test seed; by default 1 seed, the noisy "
        "variant, reference and defaults",
    )
    parser.add_argument("--report", action="store_true", help="only the tables")
    parser.add_argument("--list", action="store_true", help="the strategies, then exit")
    parser.add_argument("--job", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.list:
        for s in STRATEGIES:
            print(f"{s.name:18} {s.description}{' (extra)' if s.extra else ''}")
        return 0
    out = (
        args.out or Path("out/search-cost-quick" if args.quick else "benchmarks/search-cost")
    ).resolve()
    if args.job is not None:
        run_search(out, load_setup(out, None), Job.parse(args.job), args.cache_dir)
        return 0
    if not args.report:
        wanted = (
            QUICK
            if args.quick
            else Setup(
                n_trials=args.trials,
                epochs=args.epochs,
                val_shots=args.val_shots,
                test_seeds=args.test_seeds,
            )
        )
        load_setup(out, wanted)
        strategies = args.strategies or (
            QUICK_STRATEGIES if args.quick else [s.name for s in STRATEGIES if not s.extra]
        )
        variants = args.variants or (["noisy"] if args.quick else list(VARIANTS))
        seeds = args.seeds or (1 if args.quick else 5)
        code = run_pending(
            out,
            lambda: pending(out, variants, strategies, seeds),
            parallel=args.jobs,
            stop_after=None if args.stop_after is None else 60 * args.stop_after,
            cache_dir=args.cache_dir,
        )
        if code:
            return code
    setup = load_setup(out, None)
    records = read_jsonl(out / "results.jsonl")
    text = report(records, setup)
    (out / "report.md").write_text(text + "\n")
    figure = write_figure(records, out / "curves.html")
    print(text)
    print(f"\nreport: {out / 'report.md'}" + (f", figure: {figure}" if figure else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
