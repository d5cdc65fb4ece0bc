"""Each trial's log and curve as Optuna artifacts: where they go, what they hold, who reads them.

``tether dashboard`` is started as a process and asked for a log. The searches run
:func:`tether.testing.targets.trivial_target` through the real launcher, runner and storage.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
import socket
import subprocess
import sys
import time
from typing import Any
import urllib.error
import urllib.request

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts import download_artifact
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import FrozenTrial
from optuna.trial import TrialState
import pytest

from tests.conftest import ROOT
from tether.errors import ConfigError
from tether.search.artifacts import TrialArtifacts
from tether.search.artifacts import artifact_dir
from tether.search.artifacts import curve_csv
from tether.search.artifacts import trial_artifacts
from tether.search.execution.launcher import Launcher
from tether.search.execution.runner import Search
from tether.search.execution.runner import TicketRunner
from tether.search.execution.slots import parse_devices
from tether.search.execution.studies import create_studies
from tether.search.execution.tickets import enqueue_tickets
from tether.search.spec import load_spec
from tether.search.spec import spec_from_dict
from tether.search.storage import open_storage
from tether.search.storage import study_id_of
from tether.search.storage import trial_id_of
from tether.testing.specs import tiny_digits_spec
from tether.testing.specs import write_spec
from tether.testing.targets import trivial_target


def _spec_data(**changes: Any) -> dict[str, Any]:
    return tiny_digits_spec("art", recipe=str(ROOT / "configs" / "digits.yaml"), **changes)


def _files(trial: FrozenTrial, storage: Any, store: Any, into: Path) -> dict[str, str]:
    """The trial's artifacts, downloaded: ``{filename: text}``."""
    files = {}
    for meta in get_all_artifact_meta(trial, storage=storage):
        path = into / f"{trial.number}-{meta.filename}"
        download_artifact(artifact_store=store, file_path=str(path), artifact_id=meta.artifact_id)
        files[meta.filename] = path.read_text()
    return files


def _curve_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(text.splitlines()))


# --- the setting ------------------------------------------------------------------------------


def test_the_artifact_folder_is_beside_the_storage_unless_the_spec_names_one(
    tmp_path: Path,
) -> None:
    assert spec_from_dict(_spec_data()).artifacts is True
    assert spec_from_dict(_spec_data(artifacts=None)).artifacts is True
    assert spec_from_dict(_spec_data(artifacts=False)).artifacts is False
    assert spec_from_dict(_spec_data(artifacts="runs/art")).artifacts == "runs/art"
    path = write_spec(tmp_path, _spec_data())
    assert load_spec(str(path), ["artifacts=false"]).artifacts is False  # --set on a worker
    assert artifact_dir(True, f"sqlite:///{tmp_path}/runs/s.db") == tmp_path / "runs/s-artifacts"
    assert artifact_dir("elsewhere", "sqlite:///s.db") == Path("elsewhere")
    assert artifact_dir(False, "sqlite:///s.db") is None
    with pytest.raises(ConfigError, match="artifacts must be true .* got 3"):
        spec_from_dict(_spec_data(artifacts=3))
    with pytest.raises(ConfigError, match="artifacts must be true .* got ''"):
        spec_from_dict(_spec_data(artifacts=""))


def test_a_folder_that_cannot_be_made_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"artifacts: cannot create the folder .*file/art"):
        trial_artifacts(str(tmp_path / "file" / "art"), "sqlite:///s.db")


# --- one trial --------------------------------------------------------------------------------


def test_a_running_trial_gets_its_log_and_curve(tmp_path: Path) -> None:
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    log = tmp_path / "trial-00000.log"
    log.write_text("epoch 1\nepoch 2\n")
    curve: list[dict[str, Any]] = [
        {"epoch": 1, "train_loss": 0.5, "val_accuracy": 0.25, "lr": 0.001},
        {"epoch": 2, "train_loss": 0.25, "val_accuracy": None, "lr": 0.001, "extra": [1, 2]},
    ]
    artifacts = TrialArtifacts(tmp_path / "art")
    artifacts.upload(trial, log_path=log, curve=curve)
    metas = {m.filename: m for m in get_all_artifact_meta(trial)}
    assert {n: m.mimetype for n, m in metas.items()} == {
        "trial-00000.log": "text/plain",
        "trial-00000-curve.csv": "text/csv",
    }
    files = _files(study.trials[0], storage, artifacts.store, tmp_path)
    assert files["trial-00000.log"] == "epoch 1\nepoch 2\n"
    assert _curve_rows(files["trial-00000-curve.csv"]) == [
        {"epoch": "1", "train_loss": "0.5", "val_accuracy": "0.25", "lr": "0.001", "extra": ""},
        {"epoch": "2", "train_loss": "0.25", "val_accuracy": "", "lr": "0.001", "extra": "[1, 2]"},
    ]
    assert artifacts.failures == 0


def test_failed_uploads_warn_once_and_never_raise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    study = optuna.create_study(study_name="s")
    trials = [study.ask() for _ in range(2)]
    for trial in trials:
        study.tell(trial, 0.5)  # Optuna attaches nothing to a finished trial
    artifacts = TrialArtifacts(tmp_path / "art")
    log = tmp_path / "x.log"
    log.write_text("x")
    with caplog.at_level(logging.WARNING):
        for trial in trials:
            artifacts.upload(trial, log_path=log, curve=[])
        artifacts.upload(study.ask(), log_path=tmp_path / "missing.log", curve=[])
    assert artifacts.failures == 3
    assert [r.getMessage() for r in caplog.records] == [
        f"tether: trial 0 of s: its log and curve were not uploaded to {tmp_path / 'art'} "
        "(UpdateFinishedTrialError: Trial#0 has already finished and can not be updated.); "
        "the trial is recorded without them, and later upload failures are not reported"
    ]


# --- tether dashboard -------------------------------------------------------------------------


def test_tether_dashboard_serves_the_logs_in_the_storages_artifact_folder(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/runs/t.db"
    os.makedirs(tmp_path / "runs")
    storage = open_storage(url)
    study = optuna.create_study(study_name="d", storage=storage)
    trial = study.ask()
    log = tmp_path / "trial-00000.log"
    log.write_text("the log of trial 0\n")
    TrialArtifacts(tmp_path / "runs" / "t-artifacts").upload(trial, log_path=log, curve=[])
    study.tell(trial, 0.5)
    (meta,) = [m for m in get_all_artifact_meta(trial) if m.filename == log.name]
    path = f"/artifacts/{study_id_of(study)}/{trial_id_of(trial)}/{meta.artifact_id}"
    assert _dashboard_get(url, path, cwd=tmp_path) == "the log of trial 0\n"


def test_tether_dashboard_refuses_a_missing_artifact_folder(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    optuna.create_study(storage=url)
    done = subprocess.run(
        [sys.executable, "-m", "tether", "dashboard", "--storage", url, "--artifacts", "nowhere"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "tether: error: --artifacts nowhere: no such folder"
    ]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _dashboard_get(url: str, path: str, *, cwd: Path) -> str:
    """Start ``tether dashboard`` on ``url`` and GET ``path`` from it."""
    pytest.importorskip("optuna_dashboard")
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tether", "dashboard", "--storage", url, "--port", str(port)],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
                    text: str = reply.read().decode()
                    return text
            except urllib.error.URLError as error:  # refused: not listening yet
                late = server.poll() is not None or time.monotonic() > deadline
                if isinstance(error, urllib.error.HTTPError) or late:
                    raise
                time.sleep(0.2)
    finally:
        server.terminate()
        server.wait(10)


# --- searches ---------------------------------------------------------------------------------


def _fixed_recipe(index: int, trial: optuna.Trial) -> dict[str, Any]:
    """x from the ticket; the third trial's worker exits without a result."""
    x = trial.suggest_float("x", 0.0, 1.0)
    return {
        "x": x,
        "epochs": 3,
        **({"fail": "exit", "fail_epoch": 2} if trial.number == 2 else {}),
    }


def test_every_ended_trial_has_its_log_and_curve(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path}/a.db")
    # at epoch 1, x = 0.5 reaches 0.5 and x = 0 only 0.39: the second trial is pruned
    study = optuna.create_study(
        study_name="a/b", storage=storage, direction="maximize",
        pruner=optuna.pruners.ThresholdPruner(lower=0.45),
    )  # fmt: skip
    enqueue_tickets(study, n_trials=4, known=[{"x": 0.5}, {"x": 0.0}, {"x": 0.5}, {"x": 0.3}])
    artifacts = TrialArtifacts(tmp_path / "art")
    with Launcher(preload=()) as launcher:
        TicketRunner(
            [study], recipe=_fixed_recipe, launcher=launcher, slots=parse_devices("cpu", 2),
            log_dir=tmp_path / "logs", target=trivial_target, artifacts=artifacts,
        ).run()  # fmt: skip
    trials = study.trials
    assert [t.state for t in trials] == [
        TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.COMPLETE,
    ]  # fmt: skip
    for trial in trials:
        name = f"trial-{trial.number:05d}"
        files = _files(trial, storage, artifacts.store, tmp_path)
        assert sorted(files) == [f"{name}-curve.csv", f"{name}.log"]
        assert files[f"{name}.log"] == (tmp_path / "logs" / "a__b" / f"{name}.log").read_text()
        assert "trivial: 3 epochs" in files[f"{name}.log"]
        curve = trial.user_attrs["curve"]
        assert len(curve) == (1 if trial.state == TrialState.FAIL else 3)  # failed in epoch 2
        assert _curve_rows(files[f"{name}-curve.csv"]) == [
            {key: str(value) for key, value in epoch.items()} for epoch in curve
        ]


def test_a_search_uploads_to_the_folder_beside_its_storage(tmp_path: Path) -> None:
    spec = spec_from_dict(_spec_data(methods={"standard": {}}))
    os.makedirs(tmp_path / "runs")
    storage = open_storage(f"sqlite:///{tmp_path}/runs/t.db")
    create_studies(spec, storage, groups=["block1"])
    with Launcher(preload=()) as launcher:
        search = Search(
            spec,
            storage=storage,
            launcher=launcher,
            slots=parse_devices("cpu", 1),
            log_dir=tmp_path / "logs",
            target=trivial_target,
            groups=["block1"],
        )
        search.run()
    (trial,) = optuna.load_study(study_name="art/standard", storage=storage).trials
    store = FileSystemArtifactStore(tmp_path / "runs" / "t-artifacts")
    files = _files(trial, storage, store, tmp_path)
    log = (tmp_path / "logs" / "art__standard" / "trial-00000.log").read_text()
    assert files == {
        "trial-00000.log": log,
        "trial-00000-curve.csv": curve_csv(trial.user_attrs["curve"]),
    }
    assert "trivial: 1 epochs" in log
