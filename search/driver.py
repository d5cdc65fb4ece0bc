"""The search: one Optuna study per method, device slots, one thread per slot.

``tether run`` creates the studies (spec and code version stored on each, the budget enqueued
as tickets) and then works like any ``tether worker``: every slot's thread claims the next
ticket of the first method that has one, samples its parameters, runs the worker process and
tells the study. Any number of workers on any number of machines can join the same storage.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
import os
from pathlib import Path
import socket
import sys
import threading
import time
from typing import Any
import zlib

import optuna
from optuna.trial import TrialState

import finetune
from finetune.errors import ConfigError
from search.launcher import Launcher
from search.launcher import TrialProcess
from search.methods import deep_merge
from search.methods import enqueue_params
from search.methods import suggest
from search.samplers import make_pruner
from search.samplers import make_sampler
from search.spec import StudySpec
from search.storage import study_names
from search.tickets import Heartbeat
from search.tickets import claim
from search.tickets import enqueue_tickets
from search.tickets import reap
from search.trials import Slot
from search.trials import TrialFailed
from search.trials import run_trial


SPEC_ATTR = "tether:spec"
FINGERPRINT_ATTR = "tether:fingerprint"
VERSION_ATTR = "tether:version"


def parse_devices(devices: str, trials_per_device: int) -> list[Slot]:
    """``auto`` (every visible GPU, else the CPU), ``cpu``, or GPU indices ``0,1``."""
    if trials_per_device < 1:
        raise ConfigError(f"--trials-per-device must be >= 1, got {trials_per_device}")
    if devices == "auto":
        import torch

        count = torch.cuda.device_count()
        names = [str(i) for i in range(count)] or ["cpu"]
    elif devices == "cpu":
        names = ["cpu"]
    else:
        names = [d.strip() for d in devices.split(",") if d.strip()]
        if not names or not all(n.isdigit() for n in names):
            raise ConfigError(
                f"--devices must be auto, cpu or GPU indices like 0,1; got {devices!r}"
            )
    return [Slot(name, k) for name in names for k in range(trials_per_device)]


def worker_number(slot_count: int = 0) -> int:
    """A number that differs between processes and hosts: sampler seeds are spread by it."""
    return zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode()) % 100_000 + slot_count


def model_groups(spec: StudySpec) -> list[str]:
    """The pretrained layer groups of the spec's model (for per-group radii), no weights loaded."""
    from dataclasses import replace

    from finetune.layers import layer_groups
    from finetune.models import build_model
    from finetune.recipe import recipe_from_dict

    recipe = recipe_from_dict(spec.base_recipe())
    model_cfg = replace(recipe.model, weights="none", checkpoint=None)
    built = build_model(model_cfg, num_classes=2, image_size=recipe.data.image_size)
    return list(layer_groups(built.model, head=built.head).extractor)


def create_studies(
    spec: StudySpec,
    storage: optuna.storages.BaseStorage,
    *,
    methods: Sequence[str] | None = None,
    groups: Sequence[str] | None = None,
) -> list[optuna.Study]:
    """Create (or check) one study per method and enqueue its budget once.

    ``groups`` are the model's layer groups (:func:`model_groups` builds the model if absent).

    Raises:
        ConfigError: an existing study was made from a different search space.
    """
    groups = model_groups(spec) if groups is None else groups
    chosen = list(methods or spec.methods)
    existing = study_names(storage)
    for method in chosen:  # every check before anything is written
        if spec.study_name(method) in existing:
            study = optuna.load_study(study_name=spec.study_name(method), storage=storage)
            check_compatible(study, spec, method)
    studies = []
    for method in chosen:
        study = optuna.create_study(
            study_name=spec.study_name(method),
            storage=storage,
            direction="maximize",
            load_if_exists=True,
        )
        if FINGERPRINT_ATTR not in study.user_attrs:
            study.set_user_attr(SPEC_ATTR, spec.to_dict())
            study.set_user_attr(FINGERPRINT_ATTR, spec.fingerprint(method))
            study.set_user_attr(
                VERSION_ATTR, {"tether": finetune.__version__, "optuna": optuna.__version__}
            )
        space = spec.methods[method]
        points = [enqueue_params(space, point, groups=groups) for point in space.enqueue]
        enqueue_tickets(study, n_trials=spec.n_trials(method), known=points)
        studies.append(study)
    return studies


def _major(version: str) -> str:
    return version.split(".", 1)[0]


def _first_difference(old: Any, new: Any, path: str = "") -> str | None:
    """The dotted key of the first difference between two JSON-like values, with both values."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            found = _first_difference(
                old.get(key), new.get(key), f"{path}.{key}" if path else str(key)
            )
            if found:
                return found
        return None
    if old != new:
        return f"{path or 'the value'}: {old!r} -> {new!r}"
    return None


def check_compatible(study: optuna.Study, spec: StudySpec, method: str) -> None:
    """Refuse to work on a study made by another Optuna major or from another search space.

    Raises:
        ConfigError: naming what differs and how to start afresh.
    """
    written = study.user_attrs.get(VERSION_ATTR, {}).get("optuna")
    if written and _major(written) != _major(optuna.__version__):
        raise ConfigError(
            f"study {study.study_name} was written with optuna {written}, this process has "
            f"optuna {optuna.__version__}; every worker of a study needs the same major version"
        )
    known = study.user_attrs.get(FINGERPRINT_ATTR)
    if known is None or known == spec.fingerprint(method):
        return
    stored = study.user_attrs.get(SPEC_ATTR, {})
    old_space = dict(stored.get("methods", {}).get(method) or {})
    new_space = spec.methods[method].to_data(enqueue=False)
    old_space.pop("enqueue", None)  # starting points may change: they are not the space
    change = _first_difference(
        {"space": old_space, "recipe": stored.get("base_recipe")},
        {"space": new_space, "recipe": spec.base_recipe()},
    )
    raise ConfigError(
        f"study {study.study_name} was created from another search space or recipe "
        f"({change or 'the stored spec differs'}); give the spec a new name, or delete the "
        "study, to start afresh"
    )


@dataclass
class _MethodState:
    method: str
    study: optuna.Study
    deadline: float | None = None


class Search:
    """Run the tickets of every method of ``spec`` on ``slots`` until none is left.

    Args:
        spec: the study spec.
        storage: the shared Optuna storage.
        launcher: starts worker processes.
        slots: where trials run, one thread each.
        log_dir: one log file per trial.
        cache_dir: the workers' cache (digits source network, decoded images, DELTA).
        methods: only these methods (default: all of the spec's).
        target: what a worker runs instead of the fine-tuning (benchmarks of the harness).
        worker: offsets the sampler seed; ``tether run`` uses 0 (a seeded spec repeats),
            ``tether worker`` one derived from host and pid (no two workers share a seed).
        groups: the model's layer groups, if the caller has them (else the model is built).
    """

    def __init__(
        self,
        spec: StudySpec,
        *,
        storage: optuna.storages.BaseStorage,
        launcher: Launcher,
        slots: Sequence[Slot],
        log_dir: Path,
        cache_dir: Path | None = None,
        methods: Sequence[str] | None = None,
        target: Callable[..., int] | None = None,
        worker: int | None = None,
        groups: Sequence[str] | None = None,
    ) -> None:
        self.spec = spec
        self.target = target
        self.launcher = launcher
        self.slots = list(slots)
        self.log_dir = log_dir
        self.cache_dir = cache_dir
        self.worker = worker_number() if worker is None else worker
        cpu_slots = sum(slot.device == "cpu" for slot in self.slots)
        if cpu_slots > 1 and "TETHER_NUM_THREADS" not in os.environ:
            # trials sharing the CPU must share its cores, or they thrash (2 threads each on
            # 2 cores ran 6x slower than 1 each). Trials inherit the environment at start.
            os.environ["TETHER_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // cpu_slots))
        self.groups = list(model_groups(spec) if groups is None else groups)
        self.epochs = int(spec.base_recipe()["train"]["epochs"])
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._running: dict[Slot, TrialProcess] = {}
        self.states = []
        for method in methods or list(spec.methods):
            try:
                study = optuna.load_study(
                    study_name=spec.study_name(method),
                    storage=storage,
                    sampler=make_sampler(spec.sampler, worker=self.worker),
                    pruner=make_pruner(spec.pruner, epochs=self.epochs),
                )
            except KeyError:
                raise ConfigError(
                    f"study {spec.study_name(method)} does not exist in this storage; "
                    "create it with tether run"
                ) from None
            check_compatible(study, spec, method)
            self.states.append(_MethodState(method, study))
        self.done = 0

    def run(self) -> None:
        """Work until every ticket is taken.

        The first Ctrl-C stops the running trials (each finishes its batch, is recorded as
        failed with ``error.kind == "interrupted"``, and nothing stays RUNNING); a second one
        exits at once, leaving their tickets to ``tether reap``.
        """
        for state in self.states:
            reap(state.study)
        threads = [
            threading.Thread(
                target=self._work, args=(slot,), name=f"slot-{slot.name}-{slot.index}"
            )
            for slot in self.slots
        ]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(timeout=0.5)
        except KeyboardInterrupt:
            self._stop.set()
            with self._lock:
                running = list(self._running.values())
            print(
                f"tether: stopping {len(running)} running trial(s); Ctrl-C again to quit now",
                file=sys.stderr,
            )
            for process in running:
                process.stop(grace=30.0)
            for thread in threads:
                thread.join()
            raise

    def _track(self, slot: Slot, process: TrialProcess | None) -> None:
        with self._lock:
            if process is None:
                self._running.pop(slot, None)
            else:
                self._running[slot] = process
                if self._stop.is_set():  # Ctrl-C came while this trial was starting
                    process.stop(grace=30.0)

    def _next(self) -> tuple[_MethodState, optuna.Trial] | None:
        with self._lock:
            for state in self.states:
                if state.deadline is not None and time.monotonic() > state.deadline:
                    continue
                trial = claim(state.study)
                if trial is not None:
                    timeout = self.spec.budget.timeout
                    if state.deadline is None and timeout is not None:
                        state.deadline = time.monotonic() + timeout
                    return state, trial
        return None

    def _work(self, slot: Slot) -> None:
        while not self._stop.is_set():
            claimed = self._next()
            if claimed is None:
                return
            state, trial = claimed
            self._one(state, trial, slot)

    def _one(self, state: _MethodState, trial: optuna.Trial, slot: Slot) -> None:
        log_dir = self.log_dir / state.study.study_name.replace("/", "__")
        log_dir.mkdir(parents=True, exist_ok=True)
        study = state.study
        started = time.monotonic()
        with Heartbeat(study, trial):
            try:
                patch = suggest(
                    state.method, self.spec.methods[state.method], trial, groups=self.groups
                )
                recipe = deep_merge(self.spec.base_recipe(), patch)
                recipe["train"]["test"] = False
                value = run_trial(
                    trial,
                    recipe,
                    launcher=self.launcher,
                    slot=slot,
                    log_dir=log_dir,
                    time_limit=self.spec.budget.trial_timeout,
                    cache_dir=self.cache_dir,
                    running=lambda process: self._track(slot, process),
                    target=self.target,
                )
                study.tell(trial, value)
                outcome = f"val {100 * value:.1f}%"
            except optuna.TrialPruned as pruned:
                study.tell(trial, state=TrialState.PRUNED)
                outcome = str(pruned)
            except TrialFailed as failed:
                study.tell(trial, state=TrialState.FAIL)
                outcome = f"FAILED ({failed})"
            except BaseException:
                study.tell(trial, state=TrialState.FAIL)
                raise
        with self._lock:
            self.done += 1
            params = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
            print(
                f"[{study.study_name}] trial {trial.number}: {outcome}  ({params})  "
                f"{time.monotonic() - started:.1f}s on {slot.name}",
                file=sys.stderr,
                flush=True,
            )


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
