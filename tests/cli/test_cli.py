"""The ``tether`` command line: real subprocesses for the happy paths, a table of bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path
import subprocess
import sys

from optuna.exceptions import StorageInternalError
import pytest
import sqlalchemy.exc
import yaml

from tether.cli import main
from tether.testing.specs import tiny_digits_recipe


def _write(tmp_path: Path, data: object, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def _tether(*args: str, cache_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TETHER_CACHE_DIR": str(cache_dir)}
    return subprocess.run(
        [sys.executable, "-m", "tether", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_finetune_prints_progress_and_result(tmp_path: Path, cache_dir: Path) -> None:
    recipe = _write(tmp_path, tiny_digits_recipe(epochs=2))
    done = _tether("finetune", str(recipe), "--set", "train.epochs=3", cache_dir=cache_dir)
    assert done.returncode == 0, done.stderr
    epoch_lines = [line for line in done.stderr.splitlines() if line.startswith("epoch")]
    assert len(epoch_lines) == 3
    assert epoch_lines[-1].startswith("epoch   3/3")
    assert "test accuracy" in done.stdout
    assert "block3" in done.stdout


def test_finetune_json_prints_the_worker_events(tmp_path: Path, cache_dir: Path) -> None:
    recipe = _write(tmp_path, tiny_digits_recipe(epochs=1))
    done = _tether("finetune", str(recipe), "--json", cache_dir=cache_dir)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [e["event"] for e in events] == ["start", "epoch", "result"]


def test_list_groups(tmp_path: Path, cache_dir: Path) -> None:
    recipe = _write(tmp_path, {"model": {"name": "resnet18", "weights": "none"}})
    done = _tether("finetune", str(recipe), "--list-groups", cache_dir=cache_dir)
    assert done.returncode == 0, done.stderr
    names = [line.split()[0] for line in done.stdout.splitlines()[1:]]
    assert names == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]


def test_bad_input_through_the_console_script(tmp_path: Path, cache_dir: Path) -> None:
    recipe = _write(tmp_path, tiny_digits_recipe())
    done = _tether("finetune", str(recipe), "--set", "train.epochs=0", cache_dir=cache_dir)
    assert done.returncode == 2
    assert done.stderr.strip() == "tether: error: train.epochs must be >= 1, got 0"
    assert done.stdout == ""


def _with(section: str, **values: object) -> dict[str, object]:
    recipe = tiny_digits_recipe()
    recipe.setdefault(section, {}).update(values)
    return recipe


def _learned(**values: object) -> dict[str, object]:
    """The tiny recipe with a learned-radius constraint (no given radii)."""
    return {**tiny_digits_recipe(), "constraint": {"norm": "mars", **values}}


BAD_INPUTS: list[tuple[str, object, list[str], str]] = [
    ("missing recipe", None, [], "does not exist"),
    ("malformed yaml", "model: [unclosed\n", [], "not valid YAML (line"),
    ("top-level list", "- 1\n- 2\n", [], "must be a mapping"),
    ("unknown section", {"trian": {}}, [], "unknown key trian"),
    ("unknown key", _with("train", epoch=3), [], "unknown key train.epoch"),
    ("wrong type", tiny_digits_recipe(), ["train.epochs=ten"], "train.epochs must be an integer"),
    ("bad choice", tiny_digits_recipe(), ["train.optimizer=adamw"], "'adam', 'sgd'"),
    ("unknown model", _with("model", name="resnet5"), [], "resnet5"),
    ("unknown weights", _with("model", name="resnet18", weights="FOO"), [], "FOO"),
    ("negative radius", tiny_digits_recipe(), ["constraint.radius=-1"], "-1"),
    ("unknown norm", tiny_digits_recipe(), ["constraint.norm=l3"], "'l3'"),
    ("unknown penalty", tiny_digits_recipe(), ["penalty.name=l3-sp"], "l3-sp"),
    ("unknown group", tiny_digits_recipe(), ["constraint.radius={layer9: 1}"], "layer9"),
    ("missing group", tiny_digits_recipe(), ["constraint.radius={block1: 1}"], "block2"),
    ("bad --set", tiny_digits_recipe(), ["train.epochs"], "key=value"),
    ("refit best-val", tiny_digits_recipe(refit=True, select="best-val"), [], "train.select"),
    ("zero shots", _with("data", shots=0), [], "data.shots"),
    (
        "missing folder",
        {"data": {"kind": "folder", "root": "/nonexistent/x"}},
        [],
        "/nonexistent/x",
    ),
    ("no root", {"data": {"kind": "folder"}}, [], "data.root"),
    ("missing checkpoint", _with("model", checkpoint="/nonexistent/ck.pt"), [], "ck.pt"),
    ("no cuda", tiny_digits_recipe(device="cuda:3"), [], "CUDA"),
    ("penalty weight", tiny_digits_recipe(), ["penalty.alpha=-0.1"], "penalty.alpha"),
    (
        "scale with dict",
        tiny_digits_recipe(),
        ["constraint.radius={block1: 1}", "constraint.scale=2"],
        "scale",
    ),
    ("radius without norm", tiny_digits_recipe(), ["constraint.norm=none"], "constraint.norm"),
    ("noise without kind", _with("data", noise_rate=0.3), [], "data.noise"),
    ("negative lam", tiny_digits_recipe(optimizer="spd"), ["train.spd_lam=-1"], "spd_lam"),
    (
        "proj_freq 0",
        _learned(learn="tpgm", proj_freq=0),
        [],
        "constraint.proj_freq",
    ),
    (
        "held out every image",
        _learned(learn="tpgm", holdout=0.99),
        [],
        "leaves none to train on",
    ),
    ("ftp with radii", _with("constraint", learn="ftp"), [], "learned"),
]


@pytest.mark.parametrize(
    ("recipe", "overrides", "expected"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_is_one_line_and_exit_code_2(
    recipe: object,
    overrides: list[str],
    expected: str,
    tmp_path: Path,
    cache_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "missing.yaml" if recipe is None else _write(tmp_path, recipe)
    args = ["finetune", str(path), "--cache-dir", str(cache_dir)]
    for override in overrides:
        args += ["--set", override]
    assert main(args) == 2
    captured = capsys.readouterr()
    # Progress lines (e.g. the first pretraining of the digits source network) may come first.
    errors = [line for line in captured.err.splitlines() if "error" in line]
    assert len(errors) == 1, captured.err
    assert errors[0] == captured.err.splitlines()[-1]
    assert errors[0].startswith("tether: error: ")
    assert expected in errors[0]
    assert "Traceback" not in captured.err
    assert captured.out == ""


@pytest.mark.parametrize(
    "error",
    [
        sqlalchemy.exc.OperationalError(
            "SELECT 1", {}, Exception("connection to server at 127.0.0.1 failed\nmore")
        ),
        StorageInternalError("An exception is raised during the commit."),
    ],
)
def test_a_storage_lost_for_good_is_one_line_and_exit_1(
    error: Exception, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tether.cli import COMMANDS

    def fail(args: object) -> int:
        raise error

    monkeypatch.setattr(COMMANDS["status"], "run", fail)
    assert main(["status", "studies/digits.yaml"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tether: error: the storage failed: ")
    assert len(err.splitlines()) == 1


def test_an_unexpected_error_is_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    from tether.cli import COMMANDS

    def fail(args: object) -> int:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(COMMANDS["status"], "run", fail)
    with pytest.raises(ZeroDivisionError):
        main(["status", "studies/digits.yaml"])
