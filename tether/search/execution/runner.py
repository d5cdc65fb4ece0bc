"""The search: one Optuna study per method, device slots, one thread per slot.

``tether run`` creates the studies (spec and code version stored on each, the budget enqueued
as tickets) and then works like any ``tether worker``: every slot's thread claims the next
ticket of the first method that has one, samples its parameters, runs the worker process and
tells the study. Any number of workers on any number of machines can join the same storage.

:class:`TicketRunner` is that work loop without the spec (it imports no torch), what the
scale tests and benchmarks run in many processes; :class:`Search` is it for a spec.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass
import os
from pathlib import Path
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING
from typing import Any
import zlib

import optuna
from optuna.trial import TrialState

from tether.errors import Terminated
from tether.jsondata import deep_merge
from tether.progress import progress
from tether.search.artifacts import ArtifactUploader
from tether.search.artifacts import NoArtifacts
from tether.search.artifacts import trial_artifacts
from tether.search.callbacks import TrialCallback
from tether.search.callbacks import TrialCallbacks
from tether.search.execution.launcher import Launcher
from tether.search.execution.launcher import TrialProcess
from tether.search.execution.slots import Slot
from tether.search.execution.studies import best_trial
from tether.search.execution.studies import check_compatible
from tether.search.execution.studies import enqueue_warm_start
from tether.search.execution.studies import load_studies
from tether.search.execution.studies import model_groups
from tether.search.execution.tickets import Dispatcher
from tether.search.execution.tickets import waiting
from tether.search.execution.trials import Launch
from tether.search.execution.trials import run_claimed
from tether.search.samplers import SEED_OFFSETS
from tether.search.samplers import make_pruner
from tether.search.samplers import make_sampler
from tether.search.space import format_params
from tether.search.storage import hold_single_process
from tether.search.storage import storage_of
from tether.search.storage import storage_url


if TYPE_CHECKING:
    from tether.search.spec import StudySpec


def seed_offset() -> int:
    """A number that differs between processes and hosts: the sampler seeds of the processes
    that join a search (``tether worker``) are spread by it, so no two share a seed. Below
    :data:`~tether.search.samplers.SEED_OFFSETS`, the distance between repeats' seeds."""
    return zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode()) % SEED_OFFSETS


class TicketRunner:
    """Run the tickets of ``studies`` on ``slots``, one thread per slot, until none is left.

    Each slot's thread takes the next ticket (:class:`~tether.search.execution.tickets.Dispatcher`:
    the first study that has one; stale trials of dead workers reaped and retried on the way) and
    runs it with :func:`~tether.search.execution.trials.run_claimed`; ``recipe(index, trial)``
    samples the trial's parameters and returns its recipe. This is all of ``tether worker`` that is
    not about the spec; :class:`Search` adds the spec. A SQLite storage is held for this process
    (:func:`~tether.search.storage.hold_single_process`): a second process is refused. With no
    ticket left while another process's trial runs, a slot waits up to one grace period: if that
    worker died, its trial comes back as a retry and runs here.

    **Stopping.** The first Ctrl-C (SIGINT), or SIGTERM, stops claiming and asks every running
    trial to stop: each finishes its batch and is recorded as FAIL with ``error.kind ==
    "interrupted"`` and the signal in ``error.message``; nothing stays RUNNING. A trial still
    running after ``grace`` seconds is killed (and recorded the same way). A second signal kills
    the running trials at once, records them (for at most ``abort_wait`` seconds) and returns.
    Either way the interrupt is raised again to the caller: ``tether`` exits 130 (SIGINT) or
    143 (SIGTERM).

    Args:
        studies: the studies whose tickets to run, in order.
        recipe: ``recipe(index of the study, claimed trial) -> recipe``.
        launcher: starts worker processes.
        slots: where trials run, one thread each.
        log_dir: one log file per trial, under ``log_dir/<study name>/``.
        cache_dir: the workers' cache (digits source network, decoded images, DELTA).
        target: what a worker runs instead of the fine-tuning (benchmarks of the harness).
        time_limit: seconds per trial (its worker is stopped after), or None.
        timeout: seconds per study from this process's first trial of it; after that it
            takes no new ticket of that study. None: no limit.
        grace: seconds a stopped trial gets to finish its batch.
        callbacks: ``callback(study, frozen_trial)`` each, called after every trial this
            process ends, as ``study.optimize`` calls its callbacks, but one at a time and a
            failure logged, not raised (:class:`~tether.search.callbacks.TrialCallbacks`).
        artifacts: what takes each trial's log and curve once its worker has exited
            (:mod:`tether.search.artifacts`); default: nothing.
    """

    abort_wait = 5.0

    def __init__(
        self,
        studies: Sequence[optuna.Study],
        *,
        recipe: Callable[[int, optuna.Trial], dict[str, Any]],
        launcher: Launcher,
        slots: Sequence[Slot],
        log_dir: Path,
        cache_dir: Path | None = None,
        target: Callable[..., int] | None = None,
        time_limit: float | None = None,
        timeout: float | None = None,
        grace: float = 30.0,
        callbacks: Sequence[TrialCallback] | TrialCallbacks = (),
        artifacts: ArtifactUploader | None = None,
    ) -> None:
        self.studies = list(studies)
        self.launcher = launcher
        self.slots = list(slots)
        self.log_dir = log_dir
        self.cache_dir = cache_dir
        self.target = target
        self.time_limit = time_limit
        self.timeout = timeout
        self.grace = grace
        self.callbacks = (
            callbacks if isinstance(callbacks, TrialCallbacks) else TrialCallbacks(callbacks)
        )
        self.artifacts = NoArtifacts() if artifacts is None else artifacts
        self.done = 0
        self._seconds: list[float] = []
        self._recipe = recipe
        self._dispatcher = Dispatcher(self.studies)
        self._deadlines: list[float | None] = [None] * len(self.studies)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reason: str | None = None
        self._running: dict[Slot, TrialProcess] = {}
        self._errors: list[BaseException] = []
        self._stage: frozenset[int] = frozenset()
        cpu_slots = sum(slot.device == "cpu" for slot in self.slots)
        if cpu_slots > 1 and "TETHER_NUM_THREADS" not in os.environ:
            # trials sharing the CPU must share its cores, or they thrash (2 threads each on
            # 2 cores ran 6x slower than 1 each). Trials inherit the environment at start.
            os.environ["TETHER_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // cpu_slots))
        if self.studies:
            hold_single_process(storage_of(self.studies[0]))

    def run(self) -> None:
        """Work until every ticket is taken; see the class docstring for Ctrl-C and SIGTERM.

        Raises:
            KeyboardInterrupt: (or :class:`Terminated`) after the trials were stopped.
            Exception: the first error that ended a slot (after the other slots ended).
        """
        self.run_stage(range(len(self.studies)))

    def run_stage(self, indices: Iterable[int]) -> None:
        """:meth:`run`, on the tickets of the studies at ``indices`` only."""
        self._stage = frozenset(indices)
        finished = [threading.Event() for _ in self.slots]
        for slot, done in zip(self.slots, finished, strict=True):
            threading.Thread(
                target=self._work,
                args=(slot, done),
                name=f"slot-{slot.name}-{slot.index}",
                daemon=True,  # a second Ctrl-C must not wait for them
            ).start()
        try:
            _wait(finished)
        except KeyboardInterrupt as first:
            self._reason = _signal_name(first)
            try:
                self._stop_trials(finished)
            except KeyboardInterrupt as second:
                self._reason = f"{_signal_name(second)} twice"
                self._kill_trials(finished)
                raise
            raise
        if self._errors:
            raise self._errors[0]

    def _stop_trials(self, finished: Sequence[threading.Event]) -> None:
        running = self._halt()
        print(
            f"tether: {self._reason}: stopping {len(running)} running trial(s) (each finishes "
            "its batch and is recorded as failed); send it again to quit now",
            file=sys.stderr,
            flush=True,
        )
        for process in running:
            process.terminate()
        if not _wait(finished, until=time.monotonic() + self.grace):
            for process in self._halt():
                process.kill()
            _wait(finished)

    def _kill_trials(self, finished: Sequence[threading.Event]) -> None:
        running = self._halt()
        print(
            f"tether: {self._reason}: killing {len(running)} running trial(s)",
            file=sys.stderr,
            flush=True,
        )
        for process in running:
            process.kill()
        _wait(finished, until=time.monotonic() + self.abort_wait)

    def _halt(self) -> list[TrialProcess]:
        """Stop taking tickets; the trial processes running now."""
        with self._lock:
            self._stop.set()
            return list(self._running.values())

    def _track(self, slot: Slot, process: TrialProcess | None) -> None:
        with self._lock:
            if process is None:
                self._running.pop(slot, None)
            else:
                self._running[slot] = process
                if self._stop.is_set():  # the signal came while this trial was starting
                    process.terminate()

    def _passed_over(self, index: int) -> bool:
        """Whether a slot takes no ticket of study ``index`` now (another stage's, or late)."""
        deadline = self._deadlines[index]
        late = deadline is not None and time.monotonic() > deadline
        return late or index not in self._stage

    def _work(self, slot: Slot, finished: threading.Event) -> None:
        try:
            while not self._stop.is_set():
                claimed = self._dispatcher.next(stop=self._stop, skip=self._passed_over)
                if claimed is None:
                    return
                index, trial = claimed
                if self._deadlines[index] is None and self.timeout is not None:
                    self._deadlines[index] = time.monotonic() + self.timeout
                try:
                    self._one(index, trial, slot)
                finally:
                    self._dispatcher.done(trial)
        except BaseException as error:
            with self._lock:
                self._errors.append(error)
                self._stop.set()  # the other slots finish their trials and take no more
        finally:
            finished.set()

    def _one(self, index: int, trial: optuna.Trial, slot: Slot) -> None:
        study = self.studies[index]
        started = time.monotonic()
        launch = Launch(
            launcher=self.launcher,
            slot=slot,
            log_dir=self.log_dir,
            time_limit=self.time_limit,
            cache_dir=self.cache_dir,
            target=self.target,
            running=lambda process: self._track(slot, process),
            stopped=lambda: self._reason,
            exited=lambda log_path, curve: self.artifacts.upload(
                trial, log_path=log_path, curve=curve
            ),
        )
        outcome = run_claimed(study, trial, lambda claimed: self._recipe(index, claimed), launch)
        with self._lock:
            self.done += 1
            seconds = time.monotonic() - started
            self._seconds.append(seconds)
            progress(
                f"[{study.study_name}] trial {trial.number}: {outcome}  "
                f"({format_params(trial.params)})  {seconds:.1f}s on {slot.name}  "
                f"| {self._progress(index)}"
            )
        self.callbacks.trial_ended(study, trial)

    def _progress(self, index: int) -> str:
        """``k/N`` trials of the study ended, its best value, and the stage's ETA.

        N counts every trial of the study, waiting tickets (other workers' too) included; the
        ETA is the mean trial time in this process times the tickets left in the stage, over
        this process's slots (other workers only shorten it).
        """
        study = self.studies[index]
        states = [t.state for t in study.get_trials(deepcopy=False)]
        ended = sum(s in _ENDED for s in states)
        best = best_trial(study)
        left = sum(waiting(self.studies[i]) for i in self._stage)
        eta = sum(self._seconds) / len(self._seconds) * left / max(len(self.slots), 1)
        best_text = "-" if best is None or best.value is None else f"{100 * best.value:.1f}%"
        return f"{ended}/{len(states)} ended, best {best_text}; {left} left, ETA {duration(eta)}"


_ENDED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def duration(seconds: float) -> str:
    """A short human duration.

    Example:
        >>> duration(42.4), duration(125), duration(3 * 3600 + 60)
        ('42s', '2m05s', '3h01m')
    """
    total = round(seconds)
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    return f"{total // 3600}h{total % 3600 // 60:02d}m"


def _wait(finished: Sequence[threading.Event], *, until: float | None = None) -> bool:
    """Wait until every event is set (or the monotonic time ``until``); whether they all are.

    Events, not ``Thread.join``: after a join that Ctrl-C interrupted, CPython 3.11 reported
    the thread as finished while it still ran.
    """
    for event in finished:
        while not event.is_set():
            left = None if until is None else until - time.monotonic()
            if left is not None and left <= 0:
                return False
            event.wait(0.5 if left is None else min(0.5, left))
    return True


def _signal_name(interrupt: KeyboardInterrupt) -> str:
    return "SIGTERM" if isinstance(interrupt, Terminated) else "SIGINT (Ctrl-C)"


@dataclass
class _MethodState:
    method: str
    study: optuna.Study


class Search(TicketRunner):
    """Run the tickets of every method of ``spec`` on ``slots`` until none is left.

    A :class:`TicketRunner` over the spec's studies (one per method, in the spec's order),
    whose trials sample the method's search space into the spec's base recipe. A method with
    ``warm_start`` starts from the radii its source method learns, so the search runs in two
    stages: the sources' trials to their end, then (their first tickets enqueued by
    :func:`~tether.search.execution.studies.enqueue_warm_start`) every method's.

    Args:
        spec: the study spec.
        storage: the shared Optuna storage.
        launcher: starts worker processes.
        slots: where trials run, one thread each.
        log_dir: one log file per trial.
        cache_dir: the workers' cache (digits source network, decoded images, DELTA).
        methods: only these methods (default: all of the spec's).
        target: what a trial process runs instead of the fine-tuning (benchmarks of the
            harness).
        seed_offset: added to the spec's sampler seed; ``tether run`` uses 0 (a seeded spec
            repeats), ``tether worker`` :func:`seed_offset` (no two processes share a seed).
        groups: the model's layer groups, if the caller has them (else the model is built).

    The spec's ``callbacks`` are built here, before any trial runs, and called after each;
    its ``artifacts`` folder is made here, and each trial's log and curve are uploaded to it.

    Raises:
        ConfigError: a study does not exist, or was made from another spec or Optuna major;
            a callback factory failed; the artifact folder cannot be made.
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
        seed_offset: int = 0,
        groups: Sequence[str] | None = None,
    ) -> None:
        self.spec = spec
        self.storage = storage
        self.groups = list(model_groups(spec) if groups is None else groups)
        self.epochs = int(spec.base_recipe()["train"]["epochs"])
        studies = load_studies(  # each study its own sampler: seeded streams stay apart
            spec,
            storage,
            methods,
            sampler=lambda: make_sampler(
                spec.sampler, offset=seed_offset, n_trials=spec.budget.n_trials
            ),
            pruner=lambda: make_pruner(spec.pruner, epochs=self.epochs),
        )
        self.states = []
        for method, study in studies.items():
            check_compatible(study, spec, method)
            self.states.append(_MethodState(method, study))
        super().__init__(
            [state.study for state in self.states],
            recipe=self._recipe_of,
            launcher=launcher,
            slots=slots,
            log_dir=log_dir,
            cache_dir=cache_dir,
            target=target,
            time_limit=spec.budget.trial_timeout,
            timeout=spec.budget.timeout,
            callbacks=TrialCallbacks.of_specs(spec.callbacks),
            artifacts=trial_artifacts(spec.artifacts, storage_url(storage)),
        )

    def run(self) -> None:
        """The two stages (see the class docstring), or one if no method is warm-started."""
        spaces = self.spec.methods
        warm = [s.method for s in self.states if spaces[s.method].warm_start is not None]
        sources = {spaces[m].warm_start for m in warm}
        first = [i for i, s in enumerate(self.states) if s.method in sources]
        if first:
            self.run_stage(first)
        ran = {self.states[i].method for i in first}
        for method in warm:
            line = enqueue_warm_start(
                self.spec,
                self.storage,
                method,
                groups=self.groups,
                source_ran_here=spaces[method].warm_start in ran,
            )
            if line is not None:
                progress(line)
        super().run()

    def _recipe_of(self, index: int, trial: optuna.Trial) -> dict[str, Any]:
        method = self.states[index].method
        patch = self.spec.methods[method].suggest(trial, groups=self.groups)
        recipe = deep_merge(self.spec.base_recipe(), patch)
        recipe["train"]["test"] = False
        return recipe
