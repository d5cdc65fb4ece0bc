"""The worker process, through a real subprocess: the JSON-lines protocol and exit codes."""

from __future__ import annotations

import json
import os
from pathlib import Path
import signal
import subprocess
import sys
from typing import Any

from tether.testing.specs import tiny_digits_recipe


def _worker(recipe: object, cache_dir: Path, tmp_path: Path) -> subprocess.Popen[str]:
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    env = {**os.environ, "TETHER_CACHE_DIR": str(cache_dir), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "tether.finetune.worker", str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_a_run_emits_start_epochs_and_result(cache_dir: Path, tmp_path: Path) -> None:
    process = _worker(tiny_digits_recipe(epochs=2), cache_dir, tmp_path)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    events = _events(stdout)
    assert [e["event"] for e in events] == ["start", "epoch", "epoch", "result"]
    start, first, second, result = events
    assert start["recipe"]["train"]["epochs"] == 2
    assert start["groups"] == ["block1", "block2", "block3", "head"]
    assert [first["epoch"], second["epoch"]] == [1, 2]
    for key in ("train_loss", "train_accuracy", "val_accuracy", "seconds", "lr"):
        assert isinstance(first[key], float)
    assert 0 <= result["test_accuracy"] <= 1
    assert 0 <= result["val_accuracy"] <= 1
    assert set(result["distances"]) == {"block1", "block2", "block3", "head"}
    assert result["distances"]["head"] <= 5.0 + 1e-4
    assert result["device"] == "cpu"


def test_bad_input_is_an_error_event_and_exit_code_2(cache_dir: Path, tmp_path: Path) -> None:
    recipe = tiny_digits_recipe()
    recipe["constraint"]["radius"] = {"block9": 1.0}
    process = _worker(recipe, cache_dir, tmp_path)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 2
    events = _events(stdout)
    assert events[-1]["event"] == "error"
    assert events[-1]["kind"] == "config"
    assert "block9" in events[-1]["message"]
    assert "Traceback" not in stderr


def test_invalid_json_on_stdin_is_bad_input(cache_dir: Path) -> None:
    env = {**os.environ, "TETHER_CACHE_DIR": str(cache_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "tether.finetune.worker", "-"],
        input="{not json",
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 2
    assert _events(done.stdout)[-1]["kind"] == "config"


def test_sigterm_stops_at_the_next_batch(cache_dir: Path, tmp_path: Path) -> None:
    process = _worker(tiny_digits_recipe(epochs=100_000), cache_dir, tmp_path)
    assert process.stdout is not None
    seen = []
    for line in process.stdout:
        seen.append(json.loads(line))
        if seen[-1]["event"] == "epoch":
            process.send_signal(signal.SIGTERM)
            break
    rest, _ = process.communicate(timeout=60)
    events = seen + _events(rest)
    assert process.returncode == 143
    assert events[-1]["event"] == "stopped"
    assert events[-1]["epoch"] < 100
    assert not any(e["event"] == "result" for e in events)
