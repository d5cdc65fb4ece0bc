"""The ``tether`` command starts fast: the verbs that only read or manage a storage, and the
help, import neither torch nor torchvision (``report`` needs plotly, not torch)."""

from __future__ import annotations

from pathlib import Path
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.search.results.conftest import evaluation
from tether.search.execution.studies import create_studies
from tether.search.results.evaluate import EVALUATION_ATTR
from tether.search.spec import load_specs
from tether.search.storage import open_storage


SPEC = str(ROOT / "studies" / "digits.yaml")


@pytest.fixture(scope="module")
def storage_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite file holding the digits spec's studies (created, nothing run)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('startup') / 'tether.db'}"
    storage = open_storage(url)
    for spec in load_specs(SPEC):
        create_studies(spec, storage, groups=[])
    return url


def _imported(argv: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``python -m tether ARGV`` (the console script's entry point) and list the
    top-level modules it imported (``-X importtime`` writes one line per import)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "tether", *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    modules = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    return done, modules


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--version"],
        ["run", "--help"],
        ["compare", SPEC],
        ["compare", SPEC, "--format", "json"],
        ["status", SPEC],
        ["status", SPEC, "--format", "json"],
        ["-q", "compare", SPEC, "--format", "latex"],
        ["export", SPEC, "-o", "trials.csv"],
        ["reap", SPEC],
        ["delete", SPEC, "--methods", "standard", "--yes"],
    ],
    ids=lambda argv: " ".join(a if a != SPEC else "SPEC" for a in argv),
)
def test_a_verb_that_trains_nothing_imports_no_torch(
    argv: list[str], storage_url: str, tmp_path: Path
) -> None:
    done, modules = _imported([*argv, "--storage", storage_url], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "torch" not in modules
    assert "torchvision" not in modules
    assert "tether" in modules


def test_compare_computes_its_intervals_without_torch(tmp_path: Path) -> None:
    """With evaluations to compare, the intervals need scipy, and still no torch."""
    url = f"sqlite:///{tmp_path / 'evaluated.db'}"
    storage = open_storage(url)
    for spec in load_specs(SPEC):
        for study in create_studies(spec, storage, groups=[])[:2]:
            study.set_user_attr(EVALUATION_ATTR, evaluation([0.70, 0.80, 0.75]))
    done, modules = _imported(["compare", SPEC, "--storage", url], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "+0.0 [+0.0, +0.0]" in done.stdout
    assert "scipy" in modules
    assert "torch" not in modules


def test_the_help_imports_neither_optuna_nor_plotly(tmp_path: Path) -> None:
    done, modules = _imported(["--help"], tmp_path)
    assert done.returncode == 0
    assert not {"optuna", "plotly", "sqlalchemy", "torch"} & modules


def test_report_needs_plotly_not_torch(storage_url: str, tmp_path: Path) -> None:
    done, modules = _imported(["report", SPEC, "--storage", storage_url], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "plotly" in modules
    assert "torch" not in modules
    assert (tmp_path / "digits-report.html").is_file()


def test_run_imports_torch_when_it_checks_the_model(tmp_path: Path) -> None:
    """The check is real: a verb that must validate a model name does import torch."""
    done, modules = _imported(
        ["run", SPEC, "--set", "set.model.name=resnet5", "--storage", "sqlite:///x.db"], tmp_path
    )
    assert done.returncode == 2
    said = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    assert said == [said[0]]
    assert "resnet5" in said[0]
    assert "torchvision" in modules
