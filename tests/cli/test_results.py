"""``tether compare`` and ``tether report`` pair every method with a baseline, ``--baseline``
or ``standard``, and refuse a baseline the spec does not have in one line."""

from __future__ import annotations

import json
from pathlib import Path
import re
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.search.results.conftest import THREE_METHODS
from tests.search.results.conftest import add_study
from tests.search.results.conftest import evaluation
from tether.cli import main
from tether.search.results.compare import ACROSS_TITLE
from tether.search.spec import load_spec
from tether.search.spec import load_specs
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


def _latex(argv: list[str], capsys: pytest.CaptureFixture[str]) -> list[str]:
    assert main([*argv, "--format", "latex"]) == 0
    return capsys.readouterr().out.splitlines()


def test_compare_as_latex_is_a_booktabs_table_of_the_text_tables_cells(
    searched: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    spec, url = searched
    lines = _latex(["compare", spec, "--storage", url], capsys)
    assert lines[0] == r"\begin{tabular}{lrrrrrrrl}"
    assert lines[1] == r"\toprule"
    assert lines[2].startswith(
        r"method & best trial & trials (ok/pruned/failed) & best val \% & "
        r"test \% mean $\pm$ std [95\% CI] & vs standard (paired, 95\% CI) & "
    )
    assert lines[3] == r"\midrule"
    assert [line.split(" & ")[0] for line in lines[4:7]] == ["standard", "mars-pgm", "l2-sp"]
    assert r" & 78.0 $\pm$ 2.9 [73.3, 82.7] (n=4) & +5.0 [+1.1, +8.9] & " in lines[5]
    assert all(line.endswith(r" \\") for line in [lines[2], *lines[4:7]])
    assert lines[7:] == [r"\bottomrule", r"\end{tabular}"]


def test_compare_as_latex_escapes_what_latex_would_read_as_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = str(ROOT / "configs" / "digits.yaml")
    data = tiny_digits_spec("t", recipe=recipe, conditions={"sym_20": {}}, budget={"repeats": 2})
    spec_path = write_spec(tmp_path, data)
    url = f"sqlite:///{tmp_path / 'tether.db'}"
    storage = open_storage(url)
    for spec in load_specs(str(spec_path)):
        add_study(storage, spec, "standard", evaluated=evaluation([0.7, 0.8]))
    lines = _latex(["compare", str(spec_path), "--storage", url], capsys)
    rows = [line for line in lines if line.startswith("sym")]
    assert [row.split(" & ")[:2] for row in rows] == [
        [r"sym\_20", "0"],
        [r"sym\_20", "1"],
        [r"sym\_20", "standard"],  # across the two searches
    ]
    assert lines.count(r"\toprule") == lines.count(r"\bottomrule") == 2
    assert lines.index(r"% " + ACROSS_TITLE) == lines.index(r"\end{tabular}") + 2
    cells = [c for line in lines if " & " in line for c in line.removesuffix(r" \\").split(" & ")]
    assert not [c for c in cells if re.search(r"(?<!\\)[_%#&$~^]", c.replace(r"$\pm$", ""))]


def test_compare_with_an_unknown_format_exits_2_with_one_line(
    searched: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    spec, url = searched
    with pytest.raises(SystemExit) as exited:
        main(["compare", spec, "--storage", url, "--format", "tex"])
    assert exited.value.code == 2
    said = capsys.readouterr()
    assert said.out == ""
    assert said.err.count("\n") == 1
    assert "argument --format: invalid choice: 'tex'" in said.err
