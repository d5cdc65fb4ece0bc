"""``tether compare`` and ``tether report`` pair every method with a baseline, ``--baseline``
or ``standard``, and refuse a baseline the spec does not have in one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.search.results.conftest import THREE_METHODS
from tests.search.results.conftest import add_study
from tests.search.results.conftest import evaluation
from tether.cli import main
from tether.search.spec import load_spec
from tether.search.storage import open_storage
from tether.testing.specs import tiny_digits_spec
from tether.testing.specs import write_spec


def _searched(folder: Path, methods: dict[str, Any]) -> tuple[str, str]:
    """A spec file of ``methods`` and a SQLite storage where each was searched and evaluated
    over four seeds (MARS-PGM 5 points above standard, L2-SP never evaluated): their paths."""
    recipe = str(ROOT / "configs" / "digits.yaml")
    spec_path = write_spec(folder, tiny_digits_spec("t", recipe=recipe, methods=methods))
    url = f"sqlite:///{folder / 'tether.db'}"
    storage = open_storage(url)
    spec = load_spec(str(spec_path))
    scores = {"standard": [0.70, 0.72, 0.74, 0.76], "mars-pgm": [0.75, 0.80, 0.76, 0.81]}
    for method in methods:
        evaluated = evaluation(scores[method]) if method in scores else None
        add_study(storage, spec, method, evaluated=evaluated)
    return str(spec_path), url


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return _searched(tmp_path_factory.mktemp("results"), THREE_METHODS)


def test_compare_pairs_with_standard_by_default(
    searched: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    spec, url = searched
    assert main(["compare", spec, "--storage", url]) == 0
    out = capsys.readouterr().out
    assert "vs standard (paired, 95% CI)" in out
    assert "+5.0 [+1.1, +8.9]" in out


def test_compare_pairs_with_the_baseline_it_is_given(
    searched: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    spec, url = searched
    argv = ["compare", spec, "--storage", url, "--baseline", "mars-pgm", "--format", "json"]
    assert main(argv) == 0
    rows = {r["method"]: r for r in json.loads(capsys.readouterr().out)}
    assert {r["baseline"] for r in rows.values()} == {"mars-pgm"}
    assert rows["standard"]["diff_mean"] == pytest.approx(-0.05)
    assert rows["mars-pgm"]["diff_mean"] is None
    assert rows["l2-sp"]["diff_mean"] is None


def test_report_pairs_with_the_baseline_it_is_given(
    searched: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, url = searched
    target = tmp_path / "report.html"
    argv = ["report", spec, "--storage", url, "--baseline", "mars-pgm", "-o", str(target)]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == str(target)
    page = target.read_text()
    assert "<th>vs mars-pgm (paired, 95% CI)</th>" in page
    assert "<td>-5.0 [-8.9, -1.1]</td>" in page


@pytest.mark.parametrize("verb", ["compare", "report"])
def test_an_unknown_baseline_exits_2_with_one_line(
    verb: str, searched: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, url = searched
    target = tmp_path / "report.html"
    argv = [verb, spec, "--storage", url, "--baseline", "bss"]
    assert main([*argv, "-o", str(target)] if verb == "report" else argv) == 2
    said = capsys.readouterr()
    assert said.out == ""
    assert said.err == (
        "tether: error: --baseline names 'bss', which the spec does not have; "
        "it has standard, mars-pgm, l2-sp\n"
    )
    assert not target.exists()


def test_a_spec_without_standard_compares_without_a_baseline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    methods = {m: THREE_METHODS[m] for m in ("mars-pgm", "l2-sp")}
    spec, url = _searched(tmp_path, methods)
    assert main(["compare", spec, "--storage", url, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["method"], r["baseline"], r["diff_mean"]) for r in rows] == [
        ("mars-pgm", None, None),
        ("l2-sp", None, None),
    ]
