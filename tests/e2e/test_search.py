"""The search end to end, through the ``tether`` command line and real worker processes."""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import json
import os
from pathlib import Path
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any
import urllib.request
import uuid
from wsgiref.simple_server import WSGIRequestHandler
from wsgiref.simple_server import make_server

import optuna
from optuna.trial import TrialState
import pytest

from tests.conftest import ROOT
from tether.search.storage import open_storage
from tether.testing.specs import tiny_digits_spec
from tether.testing.specs import write_spec


SECRET = "s3cret-pw"


def _spec(tmp_path: Path, name: str, **changes: Any) -> Path:
    """The tiny digits spec: four epochs, three trials, two seeds; ``changes`` replace whole
    top-level keys."""
    spec = tiny_digits_spec(
        name,
        recipe=str(ROOT / "configs" / "digits.yaml"),
        set={"train.epochs": 4, "train.batch_size": 25},
        budget={"n_trials": 3},
        evaluation={"n_seeds": 2},
    )
    spec.update(changes)
    return write_spec(tmp_path, spec)


def _env(cache_dir: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "TETHER_CACHE_DIR": str(cache_dir), **extra}


def _tether(
    *args: str, cwd: Path, env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tether", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> tuple[Path, str, Path]:
    """One small search, evaluated and reported, shared by the read-only tests below."""
    work = tmp_path_factory.mktemp("search")
    spec = _spec(work, "tiny")
    url = f"sqlite:///{work}/tiny.db"
    done = _tether(
        "run", str(spec), "--storage", url, "--devices", "cpu", cwd=work, env=_env(cache_dir)
    )
    assert done.returncode == 0, done.stderr
    assert "mars-pgm" in done.stdout
    trials = [line for line in done.stderr.splitlines() if "] trial " in line]
    # one line per finished trial: the study's k/N, its best so far, the tickets left, an ETA
    assert re.search(
        r"^\[tiny/standard\] trial 0: .*\| 1/1 ended, best \d+\.\d%; 3 left, ETA \d", trials[0]
    )
    assert re.search(
        r"^\[tiny/mars-pgm\] trial 2: .*\| 3/3 ended, best \d+\.\d%; 0 left, ETA 0s$", trials[-1]
    )
    return work, url, spec


def test_run_searches_evaluates_and_reports(finished: tuple[Path, str, Path]) -> None:
    work, url, _ = finished
    storage = open_storage(url)
    for method in ("standard", "mars-pgm"):
        study = optuna.load_study(study_name=f"tiny/{method}", storage=storage)
        trials = study.get_trials(deepcopy=False)
        assert len(trials) == (1 if method == "standard" else 3)
        assert all(t.state == TrialState.COMPLETE for t in trials)
        first = trials[0]
        assert first.user_attrs["recipe"]["train"]["epochs"] == 4
        assert len(first.user_attrs["curve"]) == 4
        assert set(first.user_attrs["distances"]) == {"block1", "block2", "block3", "head"}
        assert first.user_attrs["device"] == "cpu"
        assert study.user_attrs["tether:spec"]["name"] == "tiny"
        evaluation = study.user_attrs["tether:evaluation"]
        assert len(evaluation["test_accuracy"]) == 2
        assert all(0 <= a <= 1 for a in evaluation["test_accuracy"])
    mars = optuna.load_study(study_name="tiny/mars-pgm", storage=storage)
    assert mars.trials[0].params == {"radius": 0.1, "head_radius": 3.0}
    report = (work / "tiny-report.html").read_text()
    assert report.count("<section>") >= 4
    assert "plotly" in report


@pytest.mark.parametrize("fmt", ["text", "markdown", "csv", "json"])
def test_compare_formats(
    fmt: str, finished: tuple[Path, str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from tether.cli import main

    _, url, spec = finished
    assert main(["compare", str(spec), "--storage", url, "--format", fmt]) == 0
    out = capsys.readouterr().out
    if fmt == "json":
        rows = json.loads(out)
        assert [r["method"] for r in rows] == ["standard", "mars-pgm"]
        assert rows[1]["complete"] == 3
        assert rows[1]["seeds"] == 2
    elif fmt == "csv":
        lines = out.splitlines()
        assert lines[0].startswith("condition,method,complete,pruned,failed")
        assert len(lines) == 3
    else:
        assert "mars-pgm" in out
        assert "+-" in out


def test_conditions_search_each_noise_rate_and_compare_the_recovered_labels(
    tmp_path: Path, cache_dir: Path
) -> None:
    rsl = {
        "groups": "geometric",
        "relative": True,
        "radius": {"low": 0.05, "high": 1.0},
        "scale": {"low": 1.0, "high": 2.0},
        "head_radius": {"low": 1.0, "high": 10.0},
        "correct_epoch": [2],
        "correct_threshold": [0.3],
        "reweight_epoch": [2],
        "enqueue": [{"radius": 0.2, "scale": 1.0, "head_radius": 3.0}],
    }
    spec = _spec(
        tmp_path,
        "noisy",
        methods={"standard": {}, "rsl": rsl},
        conditions={
            "n20": {"set": {"data.noise": "symmetric", "data.noise_rate": 0.2}},
            "n40": {"set": {"data.noise": "symmetric", "data.noise_rate": 0.4}},
        },
        budget={"n_trials": 1},
        evaluation={"n_seeds": 1},
    )
    url = f"sqlite:///{tmp_path}/noisy.db"
    env = _env(cache_dir)
    done = _tether("run", str(spec), "--storage", url, "--devices", "cpu", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    storage = open_storage(url)
    assert {"noisy.n20/standard", "noisy.n20/rsl", "noisy.n40/standard", "noisy.n40/rsl"} <= {
        s.study_name for s in optuna.get_all_study_summaries(storage)
    }
    rsl_study = optuna.load_study(study_name="noisy.n40/rsl", storage=storage)
    recipe = rsl_study.trials[0].user_attrs["recipe"]
    assert recipe["data"]["noise_rate"] == 0.4
    assert recipe["train"]["correct_epoch"] == 2
    standard = optuna.load_study(study_name="noisy.n40/standard", storage=storage)
    assert standard.trials[0].user_attrs["recipe"]["train"]["correct_epoch"] == 0
    assert (tmp_path / "noisy-report.html").read_text().count("<h2>") == 3
    table = _tether(
        "compare", str(spec), "--storage", url, "--format", "json", cwd=tmp_path, env=env
    )
    assert table.returncode == 0, table.stderr
    rows = json.loads(table.stdout)
    assert [(r["condition"], r["method"]) for r in rows] == [
        ("n20", "standard"),
        ("n20", "rsl"),
        ("n40", "standard"),
        ("n40", "rsl"),
    ]
    assert all(r["seeds"] == 1 for r in rows)
    assert all(r["recovered"] is None for r in rows if r["method"] == "standard")
    assert all(0.0 <= r["recovered"] <= 1.0 for r in rows if r["method"] == "rsl")
    text = _tether(
        "compare", str(spec), "--storage", url, "--conditions", "n40", cwd=tmp_path, env=env
    )
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[0].split()[:2] == ["condition", "method"]
    assert "noisy labels recovered %" in text.stdout
    assert "n20" not in text.stdout


def test_repeated_searches_have_their_own_studies_and_a_row_across_them(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two searches of the tiny spec (one epoch, two trials, two seeds): the first keeps
    today's study names and seed, the second samples from its own; compare adds the row of
    each method across the two."""
    from tether.cli import main
    from tether.search.results.compare import ACROSS_TITLE
    from tether.search.samplers import SEED_OFFSETS

    data = tiny_digits_spec(
        "twice",
        recipe=str(ROOT / "configs" / "digits.yaml"),
        set={"train.batch_size": 25},
        budget={"n_trials": 2, "repeats": 2},
        sampler={"name": "random", "seed": 0},
        evaluation={"n_seeds": 2},
    )
    spec = write_spec(tmp_path, data)
    url = f"sqlite:///{tmp_path}/twice.db"
    env = _env(cache_dir)
    done = _tether("run", str(spec), "--storage", url, "--devices", "cpu", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert ACROSS_TITLE in done.stdout
    assert (tmp_path / "twice-report.html").is_file()
    storage = open_storage(url)
    names = {"twice/standard", "twice/mars-pgm", "twice~r1/standard", "twice~r1/mars-pgm"}
    assert {s.study_name for s in optuna.get_all_study_summaries(storage)} == names
    first, second = (
        optuna.load_study(study_name=f"{name}/mars-pgm", storage=storage)
        for name in ("twice", "twice~r1")
    )
    assert [s.user_attrs["tether:spec"]["sampler"]["seed"] for s in (first, second)] == [
        0,
        SEED_OFFSETS,
    ]
    assert first.trials[0].params == second.trials[0].params  # the enqueued point
    assert first.trials[1].params != second.trials[1].params  # each its own sampler's
    evaluated = [s.user_attrs["tether:evaluation"] for s in (first, second)]
    assert [len(e["test_accuracy"]) for e in evaluated] == [2, 2]
    assert main(["compare", str(spec), "--storage", url, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["repeat"], r["method"]) for r in rows] == [
        (0, "standard"),
        (0, "mars-pgm"),
        (1, "standard"),
        (1, "mars-pgm"),
        (None, "standard"),
        (None, "mars-pgm"),
    ]
    mars = rows[-1]
    assert (mars["searches"], mars["seeds"], mars["complete"]) == (2, 4, 4)
    means = [r["test_mean"] for r in rows[:4] if r["method"] == "mars-pgm"]
    assert mars["test_mean"] == pytest.approx(sum(means) / 2)
    for row, study, evaluation in zip(rows[1:4:2], (first, second), evaluated, strict=True):
        assert row["best_trial"] == evaluation["best_trial"]
        assert row["best_params"] == study.trials[evaluation["best_trial"]].params
    assert main(["status", str(spec), "--storage", url]) == 0
    assert "twice~r1/mars-pgm" in capsys.readouterr().out


def _clip(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def test_learned_radii_and_robust_baselines_search_refit_and_compare(
    tmp_path: Path, cache_dir: Path
) -> None:
    """One trial each of the learned-radius and robust methods, evaluated with a refit (which
    reuses what the search chose on val); mars-pgm, listed first, waits for ftp's radii."""
    radius, head = (1e-6, 1.0), (0.5, 2.0)
    methods = {
        "mars-pgm": {
            "groups": "independent",
            "relative": True,
            "radius": {"low": radius[0], "high": radius[1]},
            "head_radius": {"low": head[0], "high": head[1]},
            "warm_start": "ftp",
        },
        "ftp": {"k": {"low": 0.5, "high": 1.0}},
        "tpgm": {"proj_freq": [1, 2]},
        "spd": {"lam": [0.5]},
        "lp-ft": {"lr": {"low": 1e-3, "high": 3e-3}},
        "wise-ft": {"lr": {"low": 1e-3, "high": 3e-3}},
    }
    spec = write_spec(
        tmp_path,
        tiny_digits_spec(
            "robust",
            recipe=str(ROOT / "configs" / "digits.yaml"),
            methods=methods,
            set={"train.batch_size": 5},  # a few steps: FTP's radii grow from 1e-8
            budget={"n_trials": 1},
            evaluation={"n_seeds": 2, "refit": True},
        ),
    )
    url = f"sqlite:///{tmp_path}/robust.db"
    env = _env(cache_dir)
    done = _tether("run", str(spec), "--storage", url, "--devices", "cpu", "--no-report",
                   cwd=tmp_path, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    started = "[robust/mars-pgm] first trial: the radii robust/ftp trial 0 learned; clipped"
    assert started in done.stderr
    storage = open_storage(url)
    studies = {m: optuna.load_study(study_name=f"robust/{m}", storage=storage) for m in methods}
    for method, study in studies.items():
        (trial,) = study.get_trials(deepcopy=False)
        assert trial.state == TrialState.COMPLETE, (method, trial.user_attrs.get("error"))
        evaluation = study.user_attrs["tether:evaluation"]
        assert evaluation["errors"] == [], method
        assert len([a for a in evaluation["test_accuracy"] if a is not None]) == 2, method
    ftp = studies["ftp"].trials[0].user_attrs
    assert studies["tpgm"].trials[0].user_attrs["learned_radii"]
    relative = ftp["learned_radii"]["relative"]
    assert any(radius[0] < r < radius[1] for r in relative.values())  # some pass unclipped
    learned = {f"radius.{g}": _clip(r, *radius) for g, r in relative.items()}
    assert studies["mars-pgm"].trials[0].params == {
        **learned,
        "head_radius": _clip(ftp["distances"]["head"], *head),
    }
    lp_ft = studies["lp-ft"]
    refit = lp_ft.user_attrs["tether:evaluation"]["recipe"]["train"]
    assert refit["probe_c"] == lp_ft.trials[0].user_attrs["probe"]["c"]
    wise_ft = studies["wise-ft"]
    refit = wise_ft.user_attrs["tether:evaluation"]["recipe"]["train"]
    assert refit["wise"] == wise_ft.trials[0].user_attrs["wise"]["alpha"]
    table = _tether("compare", str(spec), "--storage", url, "--format", "json", cwd=tmp_path,
                    env=env)  # fmt: skip
    assert table.returncode == 0, table.stderr
    rows = json.loads(table.stdout)
    assert [r["method"] for r in rows] == list(methods)
    assert all(r["seeds"] == 2 for r in rows)


def test_status_and_the_optuna_cli_read_the_storage(
    finished: tuple[Path, str, Path], cache_dir: Path
) -> None:
    work, url, spec = finished
    done = _tether("status", str(spec), "--storage", url, cwd=work, env=_env(cache_dir))
    assert done.returncode == 0, done.stderr
    assert "tiny/mars-pgm" in done.stdout
    optuna_cli = Path(sys.executable).parent / "optuna"
    studies = subprocess.run(
        [str(optuna_cli), "studies", "--storage", url, "-f", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert studies.returncode == 0, studies.stderr
    assert {s["name"] for s in json.loads(studies.stdout)} == {"tiny/standard", "tiny/mars-pgm"}
    trials = subprocess.run(
        [
            str(optuna_cli),
            "trials",
            "--storage",
            url,
            "--study-name",
            "tiny/mars-pgm",
            "-f",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert trials.returncode == 0, trials.stderr
    assert len(json.loads(trials.stdout)) == 3


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_optuna_dashboard_api_reads_the_storage(finished: tuple[Path, str, Path]) -> None:
    from optuna_dashboard import wsgi

    _, url, _ = finished
    server = make_server("127.0.0.1", 0, wsgi(open_storage(url)), handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{server.server_port}/api/studies", timeout=30
        ) as reply:
            studies = json.loads(reply.read())["study_summaries"]
    finally:
        server.shutdown()
    assert {s["study_name"] for s in studies} == {"tiny/standard", "tiny/mars-pgm"}


def test_pruning_stops_the_worker_early(tmp_path: Path, cache_dir: Path) -> None:
    spec = _spec(
        tmp_path,
        "prune",
        budget={"n_trials": 2},
        pruner={"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
        methods={
            "standard": {
                "lr": {"low": 1e-8, "high": 1e-2},
                "enqueue": [{"lr": 3e-3}, {"lr": 1e-8}],
            }
        },
        set={
            "train.epochs": 12,
            "train.batch_size": 25,
            "data.shots": 10,
            "data.val_shots": 10,
            "data.noise": "none",
            "data.noise_rate": 0.0,
        },
    )
    url = f"sqlite:///{tmp_path}/prune.db"
    done = _tether(
        "run",
        str(spec),
        "--storage",
        url,
        "--devices",
        "cpu",
        "--no-evaluate",
        "--no-report",
        cwd=tmp_path,
        env=_env(cache_dir),
    )
    assert done.returncode == 0, done.stderr
    good, bad = optuna.load_study(study_name="prune/standard", storage=open_storage(url)).trials
    curves = [[c["val_accuracy"] for c in t.user_attrs["curve"]] for t in (good, bad)]
    assert good.state == TrialState.COMPLETE, curves
    assert len(good.user_attrs["curve"]) == 12
    assert bad.state == TrialState.PRUNED, curves
    assert len(bad.user_attrs["curve"]) < 12  # the worker process stopped before its budget


@pytest.fixture
def pg_spec(tmp_path: Path, postgres_url: str) -> Iterator[tuple[Path, str, str]]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    yield _spec(tmp_path, name, budget={"n_trials": 6}), postgres_url, name
    storage = open_storage(postgres_url)
    for method in ("standard", "mars-pgm"):
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=f"{name}/{method}", storage=storage)


def _start_run(spec: Path, url: str, *, cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """``tether run`` (search only) in the background."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tether",
            "run",
            str(spec),
            "--storage",
            url,
            "--devices",
            "cpu",
            "--no-evaluate",
            "--no-report",
        ],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_studies(url: str, name: str, *, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        names = {s.study_name for s in optuna.get_all_study_summaries(open_storage(url))}
        if f"{name}/mars-pgm" in names:
            return
        time.sleep(0.5)
    raise TimeoutError("the studies were not created")


def test_two_workers_on_postgres_split_the_budget(
    pg_spec: tuple[Path, str, str], cache_dir: Path, tmp_path: Path
) -> None:
    spec, plain_url, name = pg_spec
    # A password in the URL (the test server's trust authentication ignores it) must show
    # nowhere: not in output, logs, study or trial attributes, nor in the report.
    scheme, rest = plain_url.split("://", 1)
    user, host = rest.split("@", 1)
    url = f"{scheme}://{user.split(':', 1)[0]}:{SECRET}@{host}"
    env = _env(cache_dir)
    first = _start_run(spec, url, cwd=tmp_path, env=env)
    _wait_for_studies(url, name)
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "tether",
            "worker",
            str(spec),
            "--storage",
            url,
            "--devices",
            "cpu",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert second.returncode == 0, second.stderr
    study = optuna.load_study(study_name=f"{name}/mars-pgm", storage=open_storage(url))
    trials = study.get_trials(deepcopy=False)
    assert sorted(t.number for t in trials) == list(range(6))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2, "both processes ran trials"
    report = _tether("report", str(spec), "--storage", url, "-o", "r.html", cwd=tmp_path, env=env)
    assert report.returncode == 0, report.stderr
    assert "***@" in err  # the storage line, masked
    shown = [out, err, second.stdout, second.stderr, report.stdout, report.stderr]
    shown += [p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file()]
    for method in ("standard", "mars-pgm"):
        study = optuna.load_study(study_name=f"{name}/{method}", storage=open_storage(url))
        shown.append(json.dumps(study.user_attrs, default=str))
        shown += [json.dumps(t.user_attrs, default=str) for t in study.get_trials()]
        shown += [json.dumps(t.system_attrs, default=str) for t in study.get_trials()]
    assert not [text for text in shown if SECRET in text]


def test_a_killed_worker_is_reaped_and_its_trial_retried(
    pg_spec: tuple[Path, str, str], cache_dir: Path, tmp_path: Path
) -> None:
    spec, url, name = pg_spec
    env = _env(cache_dir, TETHER_HEARTBEAT_INTERVAL="1", TETHER_GRACE_PERIOD="3")
    slow = _spec(
        tmp_path,
        name,
        budget={"n_trials": 1},
        methods={"standard": {}},
        set={"train.epochs": 100_000, "data.shots": 5, "data.val_shots": 3},
    )
    worker = _start_run(slow, url, cwd=tmp_path, env=env)
    storage = open_storage(url)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            study = optuna.load_study(study_name=f"{name}/standard", storage=storage)
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if running and running[0].intermediate_values:
                break
        except KeyError:
            pass
        time.sleep(0.5)
    worker.send_signal(signal.SIGKILL)
    worker.communicate(timeout=60)
    time.sleep(4)  # past the grace period
    done = _tether("reap", str(slow), "--storage", url, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert "1 stale trial(s) failed" in done.stdout
    study = optuna.load_study(study_name=f"{name}/standard", storage=storage)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states == [TrialState.FAIL, TrialState.WAITING]
    assert "mars-pgm" not in {
        s.study_name.split("/")[1]
        for s in optuna.get_all_study_summaries(storage)
        if s.study_name.startswith(name)
    }
