"""The deploy/ examples: manifests that parse, no password in them, and every ``tether ...``
command line in deploy/ and in the README's "Many machines" accepted by the real parser, so a
renamed verb or flag breaks this test before it breaks a cluster job."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
import re
import shlex
import subprocess
from typing import Any

import optuna
from optuna.trial import TrialState
import pytest
import yaml

from tests.conftest import ROOT
from tether.cli import build_parser


DEPLOY = ROOT / "deploy"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
SCRIPTS = sorted((DEPLOY / "slurm").glob("*.sbatch"))
PLACEHOLDER = "CHANGE-ME"
URL_WITH_PASSWORD = re.compile(r"[a-z0-9+.-]+://[^\s/:@]+:[^\s/@]+@", re.IGNORECASE)
PASSWORD_ASSIGNED = re.compile(r"password\s*=\s*(?![\"']?\$)\S", re.IGNORECASE)
FENCED = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
SHELL_PUNCTUATION = set("();<>|&")


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _all_documents() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in _documents(path)]


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _all_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _container(doc: dict[str, Any]) -> dict[str, Any]:
    containers = doc["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def _walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _tether_calls(tokens: list[str]) -> Iterator[list[str]]:
    """The arguments of each ``tether`` (or ``.../bin/tether``) among shell tokens."""
    for i, token in enumerate(tokens):
        if any(c.isspace() for c in token):  # a quoted command: sbatch --wrap '...', bash -c
            yield from _shell_commands(token)
            continue
        if Path(token).name != "tether":
            continue
        args = []
        for arg in tokens[i + 1 :]:
            if set(arg) <= SHELL_PUNCTUATION:
                break
            args.append("1" if arg.startswith("$") else arg)  # "$@", $CUDA_VISIBLE_DEVICES
        if args:  # a bare `tether` is a folder name: cd tether && ...
            yield args


def _shell_commands(text: str) -> Iterator[list[str]]:
    for line in text.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        try:
            tokens = list(lexer)
        except ValueError:  # not shell (a Python line, prose)
            continue
        yield from _tether_calls(tokens)


def _command_lines() -> list[tuple[str, list[str]]]:
    """(where, arguments) for every tether command line in deploy/ and the README section."""
    found: list[tuple[str, list[str]]] = []
    for path in SCRIPTS:
        found += [(path.name, args) for args in _shell_commands(path.read_text())]
    for path in (DEPLOY / "README.md", ROOT / "README.md"):
        text = path.read_text()
        if path.parent == ROOT:
            text = _section(text, "## Many machines")
        for block in FENCED.findall(text):
            found += [(str(path.relative_to(ROOT)), a) for a in _shell_commands(block)]
    for path in MANIFESTS:
        for node in _walk(_documents(path)):
            if isinstance(node, str):
                found += [(path.name, args) for args in _shell_commands(node)]
            elif isinstance(node, dict) and node.get("command", [None])[0] == "tether":
                found.append((path.name, _container_argv(node)[1:]))
    return found


def _container_argv(container: dict[str, Any]) -> list[str]:
    """A container's command line: its command, then its args."""
    return [str(a) for a in [*container["command"], *container.get("args", [])]]


COMMAND_LINES = _command_lines()


def _strict(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """No abbreviated flags: ``--device`` must not pass for a renamed ``--devices``."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _strict(child)
    return parser


def _parse(args: list[str]) -> argparse.Namespace:
    try:
        return _strict(build_parser()).parse_args(args)
    except SystemExit as error:
        pytest.fail(f"`tether {shlex.join(args)}` does not parse (exit {error.code})")


@pytest.mark.parametrize(
    "args", [a for _, a in COMMAND_LINES], ids=[f"{w}: {' '.join(a)}" for w, a in COMMAND_LINES]
)
def test_every_tether_command_line_parses(args: list[str]) -> None:
    parsed = _parse(args)
    if parsed.command == "dashboard":
        assert parsed.host == "127.0.0.1"  # port-forward reaches the pod's loopback; no wider


def test_the_command_lines_cover_every_step() -> None:
    verbs = {_parse(args).command for _, args in COMMAND_LINES}
    assert {"worker", "status", "reap", "dashboard", "evaluate", "compare"} <= verbs
    assert {where for where, _ in COMMAND_LINES} >= {
        "tether-array.sbatch",
        "worker-job.yaml",
        "dashboard.yaml",
        "README.md",
        "deploy/README.md",
    }


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_manifests_parse_and_name_themselves(path: Path) -> None:
    documents = _documents(path)
    assert documents
    for doc in documents:
        assert isinstance(doc, dict)
        assert doc.get("apiVersion")
        assert doc.get("kind")
        assert doc.get("metadata", {}).get("name")


def test_the_postgres_manifest_has_what_the_workers_need() -> None:
    kinds = {d["kind"] for d in _documents(DEPLOY / "kubernetes" / "postgres.yaml")}
    assert {"Secret", "Service", "StatefulSet"} <= kinds
    database = _one("StatefulSet", "tether-postgres")
    assert _container(database)["image"].startswith("postgres:16")
    assert database["spec"]["volumeClaimTemplates"]


def test_no_manifest_holds_a_password() -> None:
    for doc in _all_documents():
        if doc["kind"] == "Secret":
            values = {**doc.get("stringData", {}), **doc.get("data", {})}
            assert all(PLACEHOLDER in str(v) for v in values.values()), doc["metadata"]["name"]
            continue
        for node in _walk(doc):
            if isinstance(node, dict) and "PASSWORD" in str(node.get("name", "")).upper():
                assert "value" not in node, node
                assert node["valueFrom"]["secretKeyRef"]
    for path in [*DEPLOY.rglob("*"), ROOT / "README.md"]:
        if not path.is_file():
            continue
        text = path.read_text()
        if path.name == "README.md" and path.parent == ROOT:
            text = _section(text, "## Many machines")
        assert not URL_WITH_PASSWORD.search(text), path
        assert not PASSWORD_ASSIGNED.search(text), path


def test_the_worker_job_asks_one_gpu_per_pod_and_retries_dead_trials() -> None:
    job = _one("Job", "tether-worker")
    spec = job["spec"]
    assert spec["parallelism"] == spec["completions"] >= 1
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    worker = _container(job)
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {e["name"]: e.get("value") for e in worker["env"]}
    assert int(env["TETHER_HEARTBEAT_INTERVAL"]) < int(env["TETHER_GRACE_PERIOD"])
    assert env["TETHER_STORAGE"].startswith("postgresql+psycopg://")
    assert "PGPASSWORD" in env


def test_create_and_worker_jobs_name_the_same_search() -> None:
    create = _container(_one("Job", "tether-create"))
    worker = _container(_one("Job", "tether-worker"))
    assert create["args"] == worker["args"]  # another --set would be another search space
    _parse(["run", *create["args"]])
    assert _parse(_container_argv(worker)[1:]).command == "worker"


def test_the_create_step_creates_the_studies_and_runs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = (DEPLOY / "slurm" / "create.sbatch").read_text()
    assert script.rstrip().endswith('tether run --create-only "$@"')
    command = _container(_one("Job", "tether-create"))["command"]
    assert command == ["tether", "run", "--create-only"]
    url = f"sqlite:///{tmp_path / 'tether.db'}"
    monkeypatch.setenv("TETHER_STORAGE", url)
    argv = [*command[1:], str(ROOT / "studies" / "digits.yaml"), "--set", "budget.n_trials=2"]
    argv += ["--methods", "standard", "--devices", "cpu", "--log-dir", str(tmp_path / "logs")]
    from tether.cli import main

    assert main(argv) == 0
    study = optuna.load_study(study_name="digits/standard", storage=url)
    assert [t.state for t in study.trials] == [TrialState.WAITING] * 2
    assert not (tmp_path / "logs").exists()  # no trial ran


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_slurm_scripts_are_bash(path: Path) -> None:
    done = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_the_array_gives_each_task_one_gpu() -> None:
    script = (DEPLOY / "slurm" / "tether-array.sbatch").read_text()
    assert re.search(r"^#SBATCH --array=\d+-\d+%\d+$", script, re.MULTILINE)
    assert re.search(r"^#SBATCH --gres=gpu:1$", script, re.MULTILINE)
    assert "set -x" not in script  # would echo the storage URL
