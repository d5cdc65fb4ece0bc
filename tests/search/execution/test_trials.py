"""One trial's worker, as :func:`tether.search.execution.trials.run_claimed` runs it."""

from __future__ import annotations

from pathlib import Path
import time
from typing import Any

import optuna
import pytest

from tether.search.execution.launcher import Launcher
from tether.search.execution.slots import parse_devices
from tether.search.execution.tickets import claim
from tether.search.execution.tickets import enqueue_tickets
from tether.search.execution.trials import Launch
from tether.search.execution.trials import run_claimed
from tether.testing.targets import trivial_target


WAIT = 2.0  # what the first start waits for the forkserver, made long (a trial takes ~0.1 s)


def test_a_trials_seconds_leave_out_the_wait_for_the_worker_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first trial of a fork-mode runner waits for the forkserver to preload torch: a cost
    of the runner, paid once, which a search's compute must not charge to that trial."""
    study = optuna.create_study()
    enqueue_tickets(study, n_trials=1)
    trial = claim(study)
    assert trial is not None
    with Launcher(preload=()) as launcher:
        real = launcher.start

        def slow_start(*args: Any, **kwargs: Any) -> Any:
            time.sleep(WAIT)
            return real(*args, **kwargs)

        monkeypatch.setattr(launcher, "start", slow_start)
        launch = Launch(
            launcher=launcher,
            slot=parse_devices("cpu", 1)[0],
            log_dir=tmp_path,
            target=trivial_target,
        )
        run_claimed(study, trial, lambda t: {"x": t.suggest_float("x", 0.0, 1.0)}, launch)
    (done,) = study.get_trials(deepcopy=False)
    assert done.state == optuna.trial.TrialState.COMPLETE
    assert 0 < done.user_attrs["seconds"] < WAIT
