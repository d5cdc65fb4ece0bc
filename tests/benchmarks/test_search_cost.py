"""benchmarks/search_cost.py: the figure of merit on hand-made trials, and a smoke run."""

from __future__ import annotations

import doctest
import json
from pathlib import Path
from typing import Any

import optuna
import pytest

from benchmarks import search_cost
from benchmarks.search_cost import STRATEGIES
from benchmarks.search_cost import Cost
from benchmarks.search_cost import Job
from benchmarks.search_cost import Setup
from benchmarks.search_cost import best_by
from benchmarks.search_cost import cost_to_reach
from benchmarks.search_cost import main
from benchmarks.search_cost import pending
from benchmarks.search_cost import ran_in_order
from benchmarks.search_cost import read_jsonl
from benchmarks.search_cost import recorded_spec
from benchmarks.search_cost import report
from benchmarks.search_cost import restore_source
from benchmarks.search_cost import startable
from benchmarks.search_cost import summaries
from tether.search.spec import spec_from_dict
from tether.search.start_from import _stored_relative
from tether.search.start_from import best_trials


def trial(
    value: float | None,
    *,
    state: str = "COMPLETE",
    seconds: float = 10.0,
    epochs: int = 80,
    study: str = "mars-pgm",
    number: int = 0,
    started: str | None = None,
) -> dict[str, Any]:
    return {"study": study, "number": number, "state": state, "value": value,
            "seconds": seconds, "epochs": epochs, "started": started}  # fmt: skip


def record(strategy: str, seed: int, trials: list[dict[str, Any]], test: float) -> dict[str, Any]:
    numbered = [
        {**t, "number": i, "started": f"2026-01-01T00:00:{i:02d}"} for i, t in enumerate(trials)
    ]
    return {"variant": "noisy", "strategy": strategy, "seed": seed, "trials": numbered,
            "test": {"accuracy": [test, test]}}  # fmt: skip


def test_the_examples_in_the_docstrings_hold() -> None:
    results = doctest.testmod(search_cost)
    assert results.attempted >= 5
    assert results.failed == 0


def test_the_cost_to_reach_is_every_trial_up_to_and_including_the_one_within_a_point() -> None:
    trials = [
        trial(0.80, seconds=10.0),
        trial(0.95, state="PRUNED", seconds=3.0, epochs=20),
        trial(0.88, seconds=12.0),
        trial(0.91, seconds=9.0),
        trial(0.99, seconds=50.0),
    ]
    assert cost_to_reach(trials, 0.90) == Cost(seconds=34.0, trials=4, epochs=260)
    assert cost_to_reach(trials, 0.89) == Cost(seconds=25.0, trials=3, epochs=180)
    assert cost_to_reach(trials, 0.81) == Cost(seconds=10.0, trials=1, epochs=80)
    assert cost_to_reach(trials, 1.01) is None


def test_pruned_and_failed_trials_cost_but_never_reach() -> None:
    trials = [
        trial(0.99, state="PRUNED", seconds=4.0, epochs=10),
        trial(None, state="FAIL", seconds=1.0, epochs=0),
        trial(0.70, seconds=10.0),
    ]
    assert cost_to_reach(trials, 0.90) is None
    assert cost_to_reach(trials, 0.71) == Cost(seconds=15.0, trials=3, epochs=90)


def test_a_warm_start_source_run_costs_but_is_not_a_returned_configuration() -> None:
    trials = [trial(0.99, study="ftp", seconds=6.0), trial(0.90, seconds=5.0)]
    assert cost_to_reach(trials, 0.95) is None
    assert cost_to_reach(trials, 0.90) == Cost(seconds=11.0, trials=2, epochs=160)


@pytest.mark.parametrize("images", [50, 100, 200])
def test_within_one_point_holds_exactly_at_every_accuracy_a_val_split_can_give(
    images: int,
) -> None:
    one_point = images // 100  # images correct that make one point
    for k in range(one_point + 1, images + 1):
        target = k / images
        assert cost_to_reach([trial((k - one_point) / images)], target) is not None, k
        assert cost_to_reach([trial((k - one_point - 1) / images)], target) is None, k


def test_trials_count_in_the_order_they_started() -> None:
    late = trial(0.9, number=0, started="2026-01-01T00:00:09")
    source = trial(0.5, study="ftp", number=0, started="2026-01-01T00:00:01")
    early = trial(0.7, number=1, started="2026-01-01T00:00:05")
    assert ran_in_order({"trials": [late, source, early]}) == [source, early, late]


def test_best_by_is_the_best_returned_value_within_the_compute() -> None:
    trials = [trial(0.8, seconds=10.0), trial(0.95, state="PRUNED", seconds=2.0),
              trial(0.9, seconds=10.0)]  # fmt: skip
    assert best_by(trials, 9.0) is None
    assert best_by(trials, 12.0) == 0.8
    assert best_by(trials, 22.0) == 0.9


def reference_and_median_records() -> list[dict[str, Any]]:
    """Reference finals 0.86, 0.88, 0.92, 0.94 (median 0.90, target 0.89; whole searches
    40 s each, the last two reach at their second trial); ``median`` reaches in 10, 25 and
    15 s and misses on its fourth seed."""
    references = [
        record("reference", s, [trial(b - 0.1), trial(b), trial(0.5), trial(0.5)], 0.8)
        for s, b in enumerate([0.86, 0.88, 0.92, 0.94])
    ]
    median = [
        record("median", 0, [trial(0.90)], 0.81),
        record("median", 1, [trial(0.5, seconds=20.0), trial(0.89, seconds=5.0)], 0.79),
        record("median", 2, [trial(0.5, seconds=5.0, epochs=5), trial(0.92)], 0.83),
        record("median", 3, [trial(0.88, seconds=60.0)], 0.70),
    ]
    return references + median


def test_the_target_is_the_reference_median_and_each_seed_pays_its_own_way() -> None:
    reference, rows = summaries(reference_and_median_records(), "noisy")
    assert reference is not None
    assert reference.best == pytest.approx(0.90)
    assert (reference.seconds, reference.seeds) == (40.0, 4)
    ref_row, median_row = rows
    assert ref_row.spent("seconds") == [float("inf"), float("inf"), 20.0, 20.0]
    assert median_row.spent("seconds") == [10.0, 25.0, 15.0, float("inf")]
    assert median_row.spent("epochs") == [80.0, 160.0, 85.0, float("inf")]
    assert median_row.share(reference) == pytest.approx(20.0 / 40.0)
    assert median_row.tests == pytest.approx([0.81, 0.79, 0.83, 0.70])


def test_the_report_has_one_row_per_strategy_that_ran() -> None:
    text = report(reference_and_median_records(), Setup())
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| median |")]
    assert len(rows) == 2  # the cost table and the curve table
    cost = rows[0]
    assert cost[1:5] == ["4", "3/4", "20 [10–∞]", "50 %"]
    assert cost[7] == "89.5 [88.0–92.0]"
    assert "target is 89.0 %" in text
    assert not any(line.startswith("| tpe |") for line in text.splitlines())


def test_a_quick_run_records_every_search_and_reports_its_rows(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--quick", "--out", str(tmp_path), "--jobs", "2", "--cache-dir", str(cache_dir)]
    assert main(argv) == 0
    records = {r["strategy"]: r for r in read_jsonl(tmp_path / "results.jsonl")}
    assert sorted(records) == ["defaults", "reference"]
    for r in records.values():
        assert (r["variant"], r["seed"]) == ("noisy", 0)
        assert [t["number"] for t in r["trials"]] == [0, 1, 2]
        assert all(t["state"] == "COMPLETE" and t["epochs"] == 5 for t in r["trials"])
        assert all(t["seconds"] > 0 and set(t["params"]) == {"radius", "head_radius"}
                   for t in r["trials"])  # fmt: skip
        assert r["best"]["value"] == max(t["value"] for t in r["trials"])
        assert len(r["test"]["accuracy"]) == 1
        assert 0 < r["test"]["accuracy"][0] <= 1
    reference, defaults = records["reference"]["spec"], records["defaults"]["spec"]
    assert reference["sampler"] == {
        "name": "tpe",
        "n_startup_trials": 10,
        "multivariate": False,
        "seed": 0,
    }
    assert reference["methods"]["mars-pgm"]["relative"] is False
    assert "pruner" not in defaults
    assert defaults["sampler"] == {"seed": 0}
    capsys.readouterr()

    assert main(argv) == 0  # resumed: nothing left to run, the tables again
    out = capsys.readouterr().out
    assert "0 searches to run" in out
    assert "| reference | 1 | 1/1 |" in out
    assert sum(line.startswith("| defaults |") for line in out.splitlines()) == 2
    assert (tmp_path / "report.md").read_text().strip() in out
    with pytest.raises(SystemExit, match="another setup"):
        main(["--out", str(tmp_path), "--trials", "4"])


@pytest.mark.parametrize("strategy", [s.name for s in STRATEGIES])
def test_every_strategy_is_a_spec_tether_accepts(strategy: str, tmp_path: Path) -> None:
    data = Setup().spec(Job("clean", strategy, 2), tmp_path)
    spec = spec_from_dict(data)
    assert spec.budget.n_trials == 20
    assert spec.resolved_recipe["train"]["epochs"] == 80
    assert spec.resolved_recipe["data"]["noise"] == "none"
    assert "mars-pgm" in spec.methods


def test_a_search_that_starts_from_another_waits_for_it(tmp_path: Path) -> None:
    job = Job.parse("noisy.warm-study.s3")
    source = Job("clean", "tpe", 3)
    assert job.source() == source
    entry = Setup().spec(job, tmp_path)["methods"]["mars-pgm"]
    assert entry["start_from"] == [
        {"study": "cost.clean.tpe.s3/mars-pgm",
         "storage": f"sqlite:///{tmp_path}/storages/clean.tpe.s3.db", "top": 3}
    ]  # fmt: skip
    assert Setup().spec(job, tmp_path)["sampler"]["seed"] == 1003
    jobs = [job, Job("noisy", "tpe", 3)]
    assert startable(jobs, tmp_path) == [Job("noisy", "tpe", 3)]
    (tmp_path / "results.jsonl").write_text(
        json.dumps({"variant": "clean", "strategy": "tpe", "seed": 3}) + "\n"
    )
    assert startable(jobs, tmp_path) == jobs
    assert pending(tmp_path, ["clean"], ["tpe", "gp"], 4) == [
        Job("clean", s, k) for k in range(4) for s in ("tpe", "gp") if (s, k) != ("tpe", 3)
    ]


def test_a_missing_source_storage_is_restored_from_its_record(tmp_path: Path) -> None:
    """Storages are not committed: a later checkout rebuilds the source from results.jsonl."""
    job = Job.parse("clean.warm-study.s1")
    source_spec = Setup().spec(Job("noisy", "tpe", 1), tmp_path)
    points = [(0.2, 3.0, 0.80), (0.1, 5.0, 0.90), (0.4, 1.0, None), (0.05, 9.0, 0.90)]
    trials = [
        {**trial(value, state="COMPLETE" if value else "FAIL", number=i),
         "params": {"radius": r, "head_radius": h}}
        for i, (r, h, value) in enumerate(points)
    ]  # fmt: skip
    rows = [
        {"variant": "noisy", "strategy": "tpe", "seed": 1, "spec": source_spec, "trials": trials},
        {"variant": "clean", "strategy": "tpe", "seed": 1, "spec": {}, "trials": []},
    ]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = restore_source(tmp_path, job)
    assert path == tmp_path / "storages" / "noisy.tpe.s1.db"
    assert not list(path.parent.glob("*.part"))

    (start,) = Setup().spec(job, tmp_path)["methods"]["mars-pgm"]["start_from"]
    study = optuna.load_study(study_name=start["study"], storage=start["storage"])
    assert [(t.params, t.value) for t in best_trials(study, 3)] == [
        ({"radius": 0.1, "head_radius": 5.0}, 0.90),
        ({"radius": 0.05, "head_radius": 9.0}, 0.90),
        ({"radius": 0.2, "head_radius": 3.0}, 0.80),
    ]
    assert _stored_relative(study) is True
    assert restore_source(tmp_path, job) is None  # there now: left alone


def test_a_record_keeps_no_machine_paths(tmp_path: Path) -> None:
    spec = Setup().spec(Job.parse("noisy.warm-study.s2"), tmp_path)
    kept = recorded_spec(spec, tmp_path)
    assert str(tmp_path) not in json.dumps(kept)
    assert kept["recipe"] == "configs/digits.yaml"
    (start,) = kept["methods"]["mars-pgm"]["start_from"]
    assert start["storage"] == "sqlite:///storages/clean.tpe.s2.db"
    assert spec["methods"]["mars-pgm"]["start_from"][0]["storage"].startswith("sqlite:////")


@pytest.mark.parametrize(("n_trials", "startup"), [(3, 1), (20, 5), (40, 10)])
def test_the_sized_start_up_follows_the_budget(
    n_trials: int, startup: int, tmp_path: Path
) -> None:
    data = Setup(n_trials=n_trials).spec(Job("noisy", "tpe-multivariate", 0), tmp_path)
    assert data["sampler"] == {"name": "tpe", "seed": 0, "n_startup_trials": startup}
