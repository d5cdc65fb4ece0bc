"""``-q`` and ``-v``, before or after the verb: ``-q`` leaves results, warnings and errors,
``-v`` adds debug lines and Optuna's own; either way the levels are as they were afterwards."""

from __future__ import annotations

import argparse
import itertools
import logging
import os
from pathlib import Path
import subprocess
import sys
from typing import Any

import optuna
import pytest

from tests.conftest import ROOT
from tests.search.results.conftest import THREE_METHODS
from tests.search.results.conftest import add_study
from tether.cli import COMMANDS
from tether.cli import main
from tether.search.spec import load_specs
from tether.search.storage import open_storage
from tether.testing.specs import tiny_digits_spec
from tether.testing.specs import write_spec


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A spec file and a SQLite storage holding its studies (one trial each): their paths."""
    folder = tmp_path_factory.mktemp("verbosity")
    recipe = str(ROOT / "configs" / "digits.yaml")
    spec_path = write_spec(folder, tiny_digits_spec("v", recipe=recipe, methods=THREE_METHODS))
    url = f"sqlite:///{folder / 'tether.db'}"
    storage = open_storage(url)
    for spec in load_specs(str(spec_path)):
        for method in spec.methods:
            add_study(storage, spec, method)
    return str(spec_path), url


@pytest.mark.parametrize(
    "flags",
    [["-q"], ["--quiet"], ["AFTER", "-q"]],
    ids=["-q", "--quiet", "after the verb"],
)
def test_quiet_prints_the_result_and_no_progress(
    flags: list[str], searched: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    spec, url = searched
    assert main(["compare", spec, "--storage", url]) == 0
    loud = capsys.readouterr()
    assert loud.err.startswith("storage: ")
    argv = ["compare", spec, "--storage", url]
    argv = [*argv, *flags[1:]] if flags[0] == "AFTER" else [*flags, *argv]
    assert main(argv) == 0
    quiet = capsys.readouterr()
    assert quiet.err == ""
    assert quiet.out == loud.out


def _runs_trivial_trials(tmp_path: Path) -> Any:
    """A verb's ``run`` that runs two trivial trials with the search's runner, as ``tether
    run`` does: its progress lines, one per trial, go to stderr."""
    from tether.search.execution.launcher import Launcher
    from tether.search.execution.runner import TicketRunner
    from tether.search.execution.slots import parse_devices
    from tether.search.execution.tickets import enqueue_tickets
    from tether.testing.targets import trivial_target

    runs = itertools.count()

    def run(args: argparse.Namespace) -> int:
        url = f"sqlite:///{tmp_path / f'runner-{next(runs)}.db'}"
        study = optuna.create_study(study_name="s", storage=open_storage(url))
        enqueue_tickets(study, n_trials=2)
        with Launcher(preload=()) as launcher:
            TicketRunner(
                [study],
                recipe=lambda index, trial: {"x": trial.suggest_float("x", 0.0, 1.0)},
                launcher=launcher,
                slots=parse_devices("cpu", 1),
                log_dir=tmp_path / "logs",
                target=trivial_target,
            ).run()
        print("the result")
        return 0

    return run


def test_quiet_drops_the_runners_trial_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(COMMANDS["status"], "run", _runs_trivial_trials(tmp_path))
    assert main(["status", "any.yaml"]) == 0
    loud = capsys.readouterr()
    assert len([line for line in loud.err.splitlines() if "[s] trial " in line]) == 2
    assert main(["-q", "status", "any.yaml"]) == 0
    quiet = capsys.readouterr()
    assert (quiet.out, quiet.err) == ("the result\n", "")


def _says_everything(args: argparse.Namespace) -> int:
    """A verb that prints a progress line, logs at each level and asks a question."""
    from tether.progress import progress

    progress("progress: working")
    log = logging.getLogger("tether.cli.test")
    log.debug("tether: debug detail")
    log.info("tether: info line")
    log.warning("tether: a warning")
    print("go on? [y/N] ", end="", file=sys.stderr, flush=True)
    print("the result")
    return 0


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        ("-q", "tether: a warning\ngo on? [y/N] "),
        (None, "progress: working\ntether: info line\ntether: a warning\ngo on? [y/N] "),
        (
            "-v",
            "progress: working\ntether: debug detail\ntether: info line\ntether: a warning\n"
            "go on? [y/N] ",
        ),
    ],
)
def test_each_level_shows_what_it_promises(
    flag: str | None,
    expected: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A warning and a prompt waiting for its answer survive ``-q``; the progress does not."""
    monkeypatch.setattr(COMMANDS["status"], "run", _says_everything)
    assert main([*([flag] if flag else []), "status", "any.yaml"]) == 0
    said = capsys.readouterr()
    assert said.out == "the result\n"
    assert said.err == expected


@pytest.mark.parametrize(
    ("flag", "optuna_level", "tether_level"),
    [
        ("-q", logging.WARNING, logging.WARNING),
        (None, logging.WARNING, logging.INFO),
        ("-v", logging.INFO, logging.DEBUG),
    ],
)
def test_the_levels_hold_while_the_verb_runs_and_are_restored(
    flag: str | None, optuna_level: int, tether_level: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, int]] = []

    def run(args: argparse.Namespace) -> int:
        tether = logging.getLogger("tether").getEffectiveLevel()
        seen.append((optuna.logging.get_verbosity(), tether))
        return 0

    monkeypatch.setattr(COMMANDS["status"], "run", run)
    before = optuna.logging.get_verbosity(), logging.getLogger("tether").level
    assert main([*([flag] if flag else []), "status", "any.yaml"]) == 0
    assert seen == [(optuna_level, tether_level)]
    assert (optuna.logging.get_verbosity(), logging.getLogger("tether").level) == before


def test_quiet_and_verbose_together_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["-q", "-v", "status", "any.yaml"])
    assert exited.value.code == 2
    said = capsys.readouterr()
    assert said.err == (
        "tether: error: argument -v/--verbose: not allowed with argument -q/--quiet; "
        "see tether --help\n"
    )


class _Records(logging.Handler):
    """The messages of the records that reach the logger it is added to."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.parametrize(("flag", "shown"), [("-v", True), (None, False), ("-q", False)])
def test_optunas_own_lines_show_with_verbose_only(
    flag: str | None, shown: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    def run(args: argparse.Namespace) -> int:
        optuna.create_study(study_name="in-memory")
        return 0

    monkeypatch.setattr(COMMANDS["status"], "run", run)
    records = _Records()
    logging.getLogger("optuna").addHandler(records)
    try:
        assert main([*([flag] if flag else []), "status", "any.yaml"]) == 0
    finally:
        logging.getLogger("optuna").removeHandler(records)
    created = "A new study created in memory with name: in-memory"
    assert (created in records.messages) == shown


def test_run_creating_studies_says_nothing_when_quiet(tmp_path: Path) -> None:
    """``tether -q run SPEC --create-only`` in a fresh process: the progress lines of
    ``run`` and Optuna's own log lines (its handler writes to the real stderr) are gone."""
    recipe = str(ROOT / "configs" / "digits.yaml")
    spec = write_spec(tmp_path, tiny_digits_spec("c", recipe=recipe))
    done = subprocess.run(
        [sys.executable, "-m", "tether", "-q", "run", str(spec), "--create-only"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "TETHER_STORAGE": f"sqlite:///{tmp_path / 'tether.db'}"},
        timeout=120,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    storage = open_storage(f"sqlite:///{tmp_path / 'tether.db'}", create=False)
    assert {s.study_name for s in optuna.get_all_study_summaries(storage)} == {
        "c/standard",
        "c/mars-pgm",
    }
