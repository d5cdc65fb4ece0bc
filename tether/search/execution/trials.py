"""One Optuna trial = one worker process, watched through its events.

Each ``epoch`` event is reported to the trial; when the pruner says so, or the trial's time
limit passes, the worker is asked to stop (SIGTERM: it finishes the batch and says
``stopped``). Everything a researcher needs afterwards is kept on the trial as user
attributes, so optuna-dashboard shows it and ``tether compare`` needs nothing else:

==================  ========================================================================
``recipe``          the resolved recipe the worker ran
``curve``           the epoch events (losses, accuracies, learning rate, seconds)
``distances``       largest MARS distance from W0 per layer group (``distances_frob`` too)
``learned_radii``   FTP, TPGM: the radii learned per group, ``absolute`` and ``relative``
                    (what a warm start begins from)
``probe``           LP-FT: the probe's ``c``, chosen on val (fixed from it for a refit)
``wise``            WiSE-FT: the ``alpha`` chosen on val (fixed from it for a refit)
``device``          the slot it ran on (``cpu``, ``cuda:1``) and ``host``
``seconds``         wall time of the worker, start to exit
``versions``        tether, torch, torchvision, python of the worker
``error``           on failure: ``{"kind": ..., "message": ...}`` and the log tail; ``kind`` is
                    ``interrupted`` (Ctrl-C, SIGTERM), ``timeout``, ``crash`` (the process died:
                    a signal such as the OOM killer's SIGKILL, or an exception), ``oom``, ...
==================  ========================================================================

:func:`run_claimed` is the whole life of a claimed trial, the same in ``tether run``,
``tether worker`` and the harness benchmarks: heartbeat, parameters, worker process, and the
result told to the study exactly once (:func:`tell_once`).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterator
import dataclasses
from dataclasses import dataclass
import logging
import math
import os
from pathlib import Path
import signal
import socket
import time
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from tether.finetune.worker import EXIT_STOPPED
from tether.search.execution.launcher import Launcher
from tether.search.execution.launcher import TrialProcess
from tether.search.execution.slots import Slot
from tether.search.execution.tickets import requeue
from tether.search.storage import Heartbeat
from tether.search.storage import backend_of
from tether.search.storage import storage_of
from tether.search.storage import trial_id_of


_log = logging.getLogger(__name__)


RESULT_CHOICES = ("learned_radii", "probe", "wise")
"""What a trial's worker chose or learned on the way, kept for what comes after the search:
a warm start (:mod:`tether.search.warm_start`), a refit (:mod:`tether.search.results.evaluate`)."""


class TrialFailed(Exception):
    """The worker ended without a result (bad config, crash, out of memory, time limit)."""


@dataclass
class _Watch:
    curve: list[dict[str, Any]]
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    pruned: bool = False
    timed_out: bool = False


def _no_process(process: TrialProcess | None) -> None:
    return None


def _no_reason() -> str | None:
    return None


def _no_files(log_path: Path, curve: list[dict[str, Any]]) -> None:
    return None


@dataclass(frozen=True)
class Launch:
    """How a runner starts and watches its trials' workers: the same for every trial.

    Attributes:
        launcher: starts the worker processes.
        slot: the device slot they run on.
        log_dir: one log file per trial in it (:func:`run_claimed`: per study under it).
        time_limit: seconds a trial may run; None: no limit.
        cache_dir: the workers' cache folder; None: ``$TETHER_CACHE_DIR``.
        target: replaces the fine-tuning run inside the worker (benchmarks of the harness).
        running: told the worker process when it starts and ``None`` when it has exited, so
            that whoever holds the slot can stop it (Ctrl-C).
        stopped: why the harness stopped its trials (``"SIGTERM"``), or None: a trial it
            stopped fails as ``interrupted`` with that reason.
        exited: given the log file and the epoch curve once the worker has exited, before
            anything is recorded: Optuna attaches files (artifacts) only to a running trial.
    """

    launcher: Launcher
    slot: Slot
    log_dir: Path
    time_limit: float | None = None
    cache_dir: Path | None = None
    target: Callable[..., int] | None = None
    running: Callable[[TrialProcess | None], None] = _no_process
    stopped: Callable[[], str | None] = _no_reason
    exited: Callable[[Path, list[dict[str, Any]]], None] = _no_files


def run_trial(trial: optuna.Trial, recipe: dict[str, Any], launch: Launch) -> float:
    """Run ``recipe`` in a worker for ``trial`` as ``launch`` says; return its validation
    accuracy. If anything here fails (the storage), the worker is killed first.

    Raises:
        optuna.TrialPruned: the pruner stopped it.
        TrialFailed: it ended without a result; the reason is on the trial.
    """
    host = socket.gethostname()
    set_user_attrs(
        trial, recipe=recipe, device=launch.slot.name, host=host, worker=f"{host}:{os.getpid()}"
    )
    log_path = launch.log_dir / f"trial-{trial.number:05d}.log"
    process = launch.launcher.start(
        recipe,
        device=launch.slot.visible_devices,
        log_path=log_path,
        cache_dir=launch.cache_dir,
        target=launch.target,
    )
    # The trial's seconds start once its process has: a fork-mode launcher's first start
    # waits for the forkserver to preload torch, a cost of the runner, paid once, not of the
    # trial that happens to come first (a search's compute would count it as that trial's).
    started = time.monotonic()
    watch = _Watch(curve=[])
    launch.running(process)
    try:
        for event in _events(process, started, launch.time_limit, watch):
            _handle(trial, process, event, watch)
    except BaseException:
        process.kill()
        process.wait()
        launch.running(None)
        raise
    code = process.wait()
    launch.running(None)
    launch.exited(log_path, watch.curve)
    end = {"seconds": round(time.monotonic() - started, 3), "curve": watch.curve}
    if watch.pruned:
        set_user_attrs(trial, **end)
        raise optuna.TrialPruned(f"pruned at epoch {len(watch.curve)}")
    if watch.result is not None and code == 0:
        return _finish(trial, watch.result, end)
    reason = launch.stopped()
    if reason is not None and not watch.timed_out:
        ended = "" if code == EXIT_STOPPED else f"; {_exit_message(code)}"
        watch.error = {"kind": "interrupted", "message": f"stopped by {reason}{ended}"}
    elif watch.timed_out:
        limit = f"over the {launch.time_limit:g} s time limit"
        watch.error = {"kind": "timeout", "message": limit}
    if watch.error is None:
        watch.error = {"kind": "crash", "message": _exit_message(code)}
    watch.error["log"] = process.log_tail(20)
    set_user_attrs(trial, **end, error=watch.error)
    raise TrialFailed(f"{watch.error['kind']}: {watch.error['message']}")


def set_user_attrs(trial: optuna.Trial, **attrs: Any) -> None:
    """``trial.set_user_attr`` for each of ``attrs``; in one transaction on a server storage
    (:meth:`tether.search.storage.ResilientRDBStorage.set_trial_user_attrs`), which saves a commit
    per attribute on every trial."""
    if not attrs:
        return
    many = getattr(backend_of(storage_of(trial.study)), "set_trial_user_attrs", None)
    if many is None:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
    else:
        many(trial_id_of(trial), attrs)


def _exit_message(code: int) -> str:
    """How a worker without a result ended: its exit code, or the signal that killed it."""
    if code >= 0:
        return f"the worker exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    hint = " (out of memory? the kernel's OOM killer sends it)" if -code == signal.SIGKILL else ""
    return f"the worker was killed by {name}{hint}"


def _events(
    process: TrialProcess, started: float, time_limit: float | None, watch: _Watch
) -> Iterator[dict[str, Any]]:
    """The worker's events until it exits, stopping it once past the time limit."""
    while True:
        remaining = None if time_limit is None else time_limit - (time.monotonic() - started)
        if remaining is not None and remaining <= 0 and not watch.timed_out:
            watch.timed_out = True
            process.stop()
            remaining = None
        try:
            yield from process.events(timeout=remaining)
            return
        except TimeoutError:
            continue


def _handle(
    trial: optuna.Trial, process: TrialProcess, event: dict[str, Any], watch: _Watch
) -> None:
    kind = event.get("event")
    if kind == "start":
        set_user_attrs(trial, versions=event.get("versions", {}), groups=event.get("groups", []))
    elif kind == "epoch":
        watch.curve.append({k: v for k, v in event.items() if k != "event"})
        value = event.get("val_accuracy")
        if isinstance(value, float) and math.isfinite(value) and not watch.pruned:
            trial.report(value, step=int(event["epoch"]))
            if trial.should_prune():
                watch.pruned = True
                process.stop()
    elif kind == "result":
        watch.result = event
    elif kind == "error":
        watch.error = {"kind": event.get("kind", "crash"), "message": event.get("message", "")}
    elif kind == "stopped" and not (watch.pruned or watch.timed_out):
        watch.error = {"kind": "interrupted", "message": "the worker was stopped from outside"}


def _finish(trial: optuna.Trial, result: dict[str, Any], end: dict[str, Any]) -> float:
    keys = ("distances", "distances_frob", "test_accuracy", "selected_epoch", *RESULT_CHOICES)
    attrs = {key: result[key] for key in keys if result.get(key) is not None}
    value = result.get("val_accuracy")
    if not isinstance(value, float) or not math.isfinite(value):
        message = f"the worker reported no usable val_accuracy ({value!r})"
        set_user_attrs(trial, **end, **attrs, error={"kind": "crash", "message": message})
        raise TrialFailed(message)
    set_user_attrs(trial, **end, **attrs)
    return value


def tell_once(
    study: optuna.Study,
    trial: optuna.Trial,
    value: float | None = None,
    *,
    state: TrialState = TrialState.COMPLETE,
) -> bool:
    """Tell ``trial``'s end to the study; False if it had been finished elsewhere.

    A tell whose reply was lost with the connection is recognised by the storage (see
    :class:`tether.search.storage.ResilientRDBStorage`), so a result is recorded exactly once. A
    trial finished elsewhere is one a reaper failed while this worker could not reach the storage
    for longer than the grace period: its retry, a new ticket, runs it again.
    """
    try:
        if state == TrialState.COMPLETE:
            study.tell(trial, value)
        else:
            study.tell(trial, state=state)
    except (UpdateFinishedTrialError, ValueError):  # ValueError: "Cannot tell a FAIL trial."
        if not storage_of(study).get_trial(trial_id_of(trial)).state.is_finished():
            raise
        return False
    return True


def log_folder(log_dir: Path, study_name: str) -> Path:
    """The folder of a study's trial logs, created if needed: ``<log_dir>/<spec>__<method>``."""
    folder = log_dir / study_name.replace("/", "__")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def run_claimed(
    study: optuna.Study,
    trial: optuna.Trial,
    recipe: Callable[[optuna.Trial], dict[str, Any]],
    launch: Launch,
) -> str:
    """Run a claimed trial to its end, tell the study once, and say how it went in a line.

    Under a :class:`~tether.search.storage.Heartbeat`: ``recipe(trial)`` samples the
    parameters and returns the recipe, :func:`run_trial` runs it as ``launch`` says (one log
    file per trial under ``launch.log_dir/<study name>``), and the value, PRUNED or FAIL is
    told. Anything unexpected (a bug, the storage gone for longer than it retries) fails
    the trial and is raised.
    """
    folder = log_folder(launch.log_dir, study.study_name)
    with Heartbeat(study, trial):
        try:
            value = run_trial(trial, recipe(trial), dataclasses.replace(launch, log_dir=folder))
        except optuna.TrialPruned as pruned:
            told, outcome = tell_once(study, trial, state=TrialState.PRUNED), str(pruned)
        except TrialFailed as failed:
            told, outcome = tell_once(study, trial, state=TrialState.FAIL), f"FAILED ({failed})"
            if told and launch.stopped() is not None:  # preempted, not broken: the budget keeps it
                requeue(study, trial)
                outcome += "; enqueued again for the next worker"
        except UpdateFinishedTrialError:
            told, outcome = False, "stopped"
        except BaseException:
            try:
                tell_once(study, trial, state=TrialState.FAIL)
            except Exception as error:
                _log.warning("tether: trial %d: failure not recorded: %s", trial.number, error)
            raise
        else:
            told, outcome = tell_once(study, trial, value), f"val {100 * value:.1f}%"
    if not told:
        outcome += (
            "; not recorded: it was failed as stale (no heartbeat within the grace period), "
            "and its retry runs it again"
        )
    return outcome
