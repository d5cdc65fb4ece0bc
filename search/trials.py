"""One Optuna trial = one worker process, watched through its events.

Each ``epoch`` event is reported to the trial; when the pruner says so, or the trial's time
limit passes, the worker is asked to stop (SIGTERM: it finishes the batch and says
``stopped``). Everything a researcher needs afterwards is kept on the trial as user
attributes, so optuna-dashboard shows it and ``tether compare`` needs nothing else:

==============  ============================================================================
``recipe``      the resolved recipe the worker ran
``curve``       the epoch events (losses, accuracies, learning rate, seconds)
``distances``   largest MARS distance from W0 per layer group (``distances_frob`` too)
``device``      the slot it ran on (``cpu``, ``cuda:1``) and ``host``
``seconds``     wall time of the worker, start to exit
``versions``    tether, torch, torchvision, python of the worker
``error``       on failure: ``{"kind": ..., "message": ...}`` and the log tail
==============  ============================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
import math
import os
from pathlib import Path
import socket
import time
from typing import Any

import optuna

from search.launcher import Launcher
from search.launcher import TrialProcess


@dataclass(frozen=True)
class Slot:
    """A place a trial can run: a device and the number of this slot on it."""

    device: str  # "cpu" or a CUDA index "0", "1", ...
    index: int

    @property
    def name(self) -> str:
        return "cpu" if self.device == "cpu" else f"cuda:{self.device}"

    @property
    def visible_devices(self) -> str:
        """``CUDA_VISIBLE_DEVICES`` for the worker: nothing for the CPU, one GPU otherwise."""
        return "" if self.device == "cpu" else self.device


class TrialFailed(Exception):
    """The worker ended without a result (bad config, crash, out of memory, time limit)."""


@dataclass
class _Watch:
    curve: list[dict[str, Any]]
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    pruned: bool = False
    timed_out: bool = False


def run_trial(
    trial: optuna.Trial,
    recipe: dict[str, Any],
    *,
    launcher: Launcher,
    slot: Slot,
    log_dir: Path,
    time_limit: float | None = None,
    cache_dir: Path | None = None,
    running: Callable[[TrialProcess | None], None] = lambda process: None,
    target: Callable[..., int] | None = None,
) -> float:
    """Run ``recipe`` in a worker for ``trial``; return its validation accuracy.

    ``running`` is told the worker process when it starts and ``None`` when it has exited,
    so that whoever holds the slot can stop it (Ctrl-C). ``target`` replaces the fine-tuning
    run inside the worker (benchmarks of the harness itself).

    Raises:
        optuna.TrialPruned: the pruner stopped it.
        TrialFailed: it ended without a result; the reason is on the trial.
    """
    trial.set_user_attr("recipe", recipe)
    trial.set_user_attr("device", slot.name)
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    log_path = log_dir / f"trial-{trial.number:05d}.log"
    started = time.monotonic()
    process = launcher.start(
        recipe, device=slot.visible_devices, log_path=log_path, cache_dir=cache_dir, target=target
    )
    watch = _Watch(curve=[])
    running(process)
    try:
        for event in _events(process, started, time_limit, watch):
            _handle(trial, process, event, watch)
    finally:
        code = process.wait()
        running(None)
        trial.set_user_attr("seconds", round(time.monotonic() - started, 3))
        trial.set_user_attr("curve", watch.curve)
    if watch.pruned:
        raise optuna.TrialPruned(f"pruned at epoch {len(watch.curve)}")
    if watch.result is not None and code == 0:
        return _finish(trial, watch.result)
    if watch.timed_out:
        watch.error = {"kind": "timeout", "message": f"over the {time_limit:g} s time limit"}
    if watch.error is None:
        watch.error = {"kind": "crash", "message": f"the worker exited with code {code}"}
    watch.error["log"] = process.log_tail(20)
    trial.set_user_attr("error", watch.error)
    raise TrialFailed(f"{watch.error['kind']}: {watch.error['message']}")


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
        trial.set_user_attr("versions", event.get("versions", {}))
        trial.set_user_attr("groups", event.get("groups", []))
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


def _finish(trial: optuna.Trial, result: dict[str, Any]) -> float:
    for key in ("distances", "distances_frob", "test_accuracy", "selected_epoch"):
        if result.get(key) is not None:
            trial.set_user_attr(key, result[key])
    value = result.get("val_accuracy")
    if not isinstance(value, float) or not math.isfinite(value):
        raise TrialFailed(f"the worker reported no usable val_accuracy ({value!r})")
    return value
