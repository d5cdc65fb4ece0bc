"""Optuna callbacks named in a spec: validated when it loads, called after every ended trial.

The trials are :func:`tether.testing.targets.trivial_target` runs through the real launcher,
runner and storage; MLflow writes to a SQLite file in ``tmp_path`` (no server, no network).
"""

from __future__ import annotations

import logging
from pathlib import Path
import subprocess
import sys
import threading
from typing import Any

import optuna
from optuna.trial import FrozenTrial
from optuna.trial import TrialState
import pytest

from tests.conftest import ROOT
from tether.errors import ConfigError
from tether.search.callbacks import CallbackSpec
from tether.search.callbacks import TrialCallbacks
from tether.search.execution.launcher import Launcher
from tether.search.execution.runner import Search
from tether.search.execution.runner import TicketRunner
from tether.search.execution.slots import parse_devices
from tether.search.execution.studies import create_studies
from tether.search.execution.tickets import enqueue_tickets
from tether.search.spec import spec_from_dict
from tether.search.storage import open_storage
from tether.testing.specs import tiny_digits_spec
from tether.testing.specs import write_spec
from tether.testing.targets import trivial_target


MLFLOW = "optuna_integration.mlflow:MLflowCallback"


def _spec_data(**changes: Any) -> dict[str, Any]:
    return tiny_digits_spec("cb", recipe=str(ROOT / "configs" / "digits.yaml"), **changes)


# --- the spec ---------------------------------------------------------------------------------


def test_a_spec_names_callbacks_by_path_or_with_kwargs() -> None:
    spec = spec_from_dict(
        _spec_data(
            callbacks=[
                "collections:OrderedDict",
                {"factory": MLFLOW, "kwargs": {"metric_name": "val accuracy"}},
            ]
        )
    )
    assert spec.callbacks == (
        CallbackSpec("collections:OrderedDict"),
        CallbackSpec(MLFLOW, {"metric_name": "val accuracy"}),
    )
    assert spec_from_dict(_spec_data()).callbacks == ()
    assert "callbacks" not in spec.to_dict()  # this process's setting, not the study's


@pytest.mark.parametrize(
    ("callbacks", "message"),
    [
        ("collections:Counter", r"callbacks must be a list"),
        (["collections.Counter"], r"callbacks\[0\]: 'collections.Counter' is not a factory path"),
        (["no_such_package.sub:make"], r"callbacks\[0\]: cannot import no_such_package.sub"),
        (["optuna_integration.nothing:X"], r"cannot import .* install tether\[mlflow\]"),
        (["collections:nothing"], r"callbacks\[0\]: collections has no nothing"),
        (["math:pi"], r"callbacks\[0\]: math:pi is a float, not a callable factory"),
        (
            [{"factory": MLFLOW, "kwargs": {"metric": "val accuracy"}}],
            r"callbacks\[0\]: .*MLflowCallback: bad kwargs .*'metric'",
        ),
        ([{"factory": MLFLOW, "kwarg": {}}], r"unknown key callbacks\[0\].kwarg"),
        ([{"kwargs": {}}], r"callbacks\[0\].factory must be"),
        ([{"factory": MLFLOW, "kwargs": [1]}], r"callbacks\[0\].kwargs must map"),
        ([3], r"callbacks\[0\] must be"),
    ],
)
def test_a_bad_callback_is_refused_when_the_spec_loads(callbacks: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        spec_from_dict(_spec_data(callbacks=callbacks))


def test_tether_run_refuses_a_bad_callback_in_one_line_and_writes_nothing(
    tmp_path: Path,
) -> None:
    spec = write_spec(tmp_path, _spec_data(callbacks=["tether.search:no_such_factory"]))
    db = tmp_path / "t.db"
    done = subprocess.run(
        [sys.executable, "-m", "tether", "run", str(spec), "--storage", f"sqlite:///{db}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "tether: error: callbacks[0]: tether.search has no no_such_factory "
        "(tether.search:no_such_factory)"
    ]
    assert not db.exists()


@pytest.mark.filterwarnings("ignore:MLflowCallback has been deprecated:FutureWarning")
def test_a_factory_that_fails_or_returns_no_callable_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"callbacks\[1\]: collections:Counter\(\) returned"):
        TrialCallbacks.of_specs([CallbackSpec(MLFLOW), CallbackSpec("collections:Counter")])
    with pytest.raises(
        ConfigError, match=r"callbacks\[0\]: .*MLflowCallback\(metric_name=3\) fail"
    ):
        TrialCallbacks.of_specs([CallbackSpec(MLFLOW, {"metric_name": 3})])


# --- calls after each trial -------------------------------------------------------------------


class _Recorder:
    """A callback that keeps what it was called with, and checks it is called alone."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, FrozenTrial]] = []
        self._busy = threading.Lock()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if not self._busy.acquire(blocking=False):
            raise AssertionError("two callbacks ran at once")
        try:
            self.calls.append((study.study_name, trial))
        finally:
            self._busy.release()


def _broken(study: optuna.Study, trial: FrozenTrial) -> None:
    raise RuntimeError(f"tracker down\nsecond line of trial {trial.number}")


def _fixed_recipe(index: int, trial: optuna.Trial) -> dict[str, Any]:
    """x from the ticket; the third trial's worker exits without a result."""
    x = trial.suggest_float("x", 0.0, 1.0)
    return {"x": x, "epochs": 2, **({"fail": "exit"} if trial.number == 2 else {})}


def test_callbacks_see_every_ended_trial_as_stored_and_a_failing_one_only_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage = open_storage(f"sqlite:///{tmp_path}/cb.db")
    # at epoch 1, x = 0.5 reaches 0.5 and x = 0 only 0.39: the second trial is pruned
    study = optuna.create_study(
        study_name="cb", storage=storage, direction="maximize",
        pruner=optuna.pruners.ThresholdPruner(lower=0.45),
    )  # fmt: skip
    enqueue_tickets(study, n_trials=4, known=[{"x": 0.5}, {"x": 0.0}, {"x": 0.5}, {"x": 0.4}])
    recorder = _Recorder()
    with Launcher(preload=()) as launcher, caplog.at_level(logging.WARNING):
        TicketRunner(
            [study],
            recipe=_fixed_recipe,
            launcher=launcher,
            slots=parse_devices("cpu", 2),
            log_dir=tmp_path / "logs",
            target=trivial_target,
            callbacks=[_broken, recorder],
        ).run()
    states = {t.number: t.state for _, t in recorder.calls}
    assert states == {
        0: TrialState.COMPLETE,
        1: TrialState.PRUNED,
        2: TrialState.FAIL,
        3: TrialState.COMPLETE,
    }
    for name, trial in recorder.calls:  # the trial as the storage holds it after the tell
        assert name == "cb"
        assert trial == study.trials[trial.number]
        assert "curve" in trial.user_attrs
    warnings = [r.getMessage() for r in caplog.records if "callback" in r.getMessage()]
    assert sorted(warnings) == [
        f"tether: callback {_broken!r} failed on trial {n} of cb (RuntimeError: tracker down); "
        "the search goes on"
        for n in range(4)
    ]


@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")  # mlflow's
def test_mlflow_records_one_run_per_ended_trial_with_its_metric_and_params(
    tmp_path: Path,
) -> None:
    mlflow = pytest.importorskip("mlflow")
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    kwargs = {"tracking_uri": tracking, "metric_name": "val accuracy"}
    spec = spec_from_dict(_spec_data(callbacks=[{"factory": MLFLOW, "kwargs": kwargs}]))
    storage = open_storage(f"sqlite:///{tmp_path}/t.db")
    groups = ["block1", "block2", "block3"]
    create_studies(spec, storage, groups=groups)
    with Launcher(preload=()) as launcher, pytest.warns(FutureWarning, match="MLflowCallback"):
        Search(spec, storage=storage, launcher=launcher, slots=parse_devices("cpu", 1),
               log_dir=tmp_path / "logs", target=trivial_target, groups=groups).run()  # fmt: skip
    client = mlflow.MlflowClient(tracking_uri=tracking)
    for method in spec.methods:
        study = optuna.load_study(study_name=spec.study_name(method), storage=storage)
        experiment = client.get_experiment_by_name(study.study_name)
        runs = client.search_runs([experiment.experiment_id])
        by_number = {int(r.data.tags["number"]): r for r in runs}
        assert sorted(by_number) == [t.number for t in study.trials]
        for trial in study.trials:
            run = by_number[trial.number].data
            assert run.metrics == {"val accuracy": trial.value}
            assert run.params == {k: str(v) for k, v in trial.params.items()}
            assert run.tags["state"] == "COMPLETE"
