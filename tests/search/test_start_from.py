"""Starting a search from earlier studies: their best trials, mapped, clipped and told, enqueued
once as the first tickets of the budget; bad sources refused in one line before any write."""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from typing import Literal

import optuna
from optuna.distributions import BaseDistribution
from optuna.distributions import CategoricalDistribution
from optuna.distributions import FloatDistribution
import pytest

from tests.conftest import ROOT
from tether.cli import main
from tether.errors import ConfigError
from tether.search.execution.studies import SPEC_ATTR
from tether.search.execution.studies import check_compatible
from tether.search.execution.studies import create_studies
from tether.search.execution.studies import enqueue_warm_start
from tether.search.spec import StudySpec
from tether.search.spec import spec_from_dict
from tether.search.start_from import START_ATTR
from tether.search.start_from import StartSource
from tether.search.storage import open_storage
from tether.search.storage import study_names
from tether.testing.specs import tiny_digits_spec
from tether.testing.specs import write_spec


GROUPS = ["block1", "block2", "block3"]
MARS: dict[str, Any] = {
    "relative": True,
    "radius": {"low": 0.05, "high": 1.0},
    "head_radius": {"low": 1.0, "high": 10.0},
}
SOURCE_TRIALS: list[tuple[float, dict[str, Any]]] = [
    (0.50, {"radius": 0.2, "head_radius": 2.0}),
    (0.90, {"radius": 1.5, "head_radius": 4.0, "lr": 0.01}),  # radius out of range
    (0.70, {"radius": 0.3}),  # no head_radius: left to the sampler
    (0.90, {"radius": 0.4, "head_radius": 12.0}),  # ties trial 1, a later number
    (0.30, {"radius": 0.6, "head_radius": 6.0}),
]


def _spec(
    mars: Mapping[str, Any] | None = None,
    *,
    methods: Mapping[str, Any] | None = None,
    **changes: Any,
) -> StudySpec:
    """The tiny digits spec ``new``: standard, MARS-PGM (:data:`MARS`, ``mars``), ``methods``."""
    every = {"standard": {}, "mars-pgm": {**MARS, **(mars or {})}, **(methods or {})}
    data = tiny_digits_spec("new", recipe="digits.yaml", methods=every, **changes)
    return spec_from_dict(data, root=str(ROOT / "configs"))


def _distribution(value: Any) -> BaseDistribution:
    if isinstance(value, str):
        return CategoricalDistribution(["mars", "frob", "l2"])
    return FloatDistribution(1e-3, 100.0)


def add_source(
    storage: optuna.storages.BaseStorage,
    name: str = "old/mars-pgm",
    trials: Sequence[tuple[float, Mapping[str, Any]]] = SOURCE_TRIALS,
    *,
    direction: Literal["minimize", "maximize"] = "maximize",
    relative: bool | None = None,
) -> optuna.Study:
    """An earlier study made by hand: one complete trial per (value, params), a failed one
    too; with ``relative`` the spec a Tether study stores, its radii in those units."""
    study = optuna.create_study(study_name=name, storage=storage, direction=direction)
    for value, params in trials:
        study.add_trial(
            optuna.trial.create_trial(
                value=value,
                params=dict(params),
                distributions={k: _distribution(v) for k, v in params.items()},
            )
        )
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    if relative is not None:
        spec_name, method = name.split("/")
        stored = {"name": spec_name, "methods": {method: {"relative": relative}}}
        study.set_user_attr(SPEC_ATTR, stored)
    return study


def tickets(study: optuna.Study) -> list[dict[str, Any]]:
    """The fixed parameters of each ticket, in order ({} for one the sampler fills)."""
    return [t.system_attrs.get("fixed_params", {}) for t in study.get_trials(deepcopy=False)]


def _mars(studies: Sequence[optuna.Study]) -> optuna.Study:
    return next(s for s in studies if s.study_name.endswith("/mars-pgm"))


# --- what is enqueued -------------------------------------------------------------------------


def test_the_best_k_are_enqueued_first_mapped_clipped_and_told(
    capsys: pytest.CaptureFixture[str],
) -> None:
    storage = optuna.storages.InMemoryStorage()
    add_source(storage)
    spec = _spec(
        {
            "start_from": [{"study": "old/mars-pgm", "top": 3}],
            "enqueue": [{"radius": 0.1, "head_radius": 3.0}],
        },
        budget={"n_trials": 6},
    )
    mars = _mars(create_studies(spec, storage, groups=GROUPS))
    assert tickets(mars) == [
        {"radius": 1.0, "head_radius": 4.0},  # trial 1: 0.90, radius clipped; lr dropped
        {"radius": 0.4, "head_radius": 10.0},  # trial 3: 0.90 too, head_radius clipped
        {"radius": 0.3},  # trial 2: 0.70, head_radius left to the sampler
        {"radius": 0.1, "head_radius": 3.0},  # the spec's enqueue point
        {},
        {},
    ]
    assert [p["trial"] for p in mars.user_attrs[START_ATTR]] == [1, 3, 2]
    assert mars.user_attrs[START_ATTR][0]["value"] == 0.9
    assert capsys.readouterr().err.splitlines() == [
        "[new/mars-pgm] starts from old/mars-pgm: trials 1, 3, 2 (its best 3); "
        "trial 1 clipped into the spec: radius 1.5 -> 1; "
        "trial 3 clipped into the spec: head_radius 12 -> 10; "
        "not searched here: lr"
    ]


def test_the_starting_points_count_in_the_exact_budget() -> None:
    storage = optuna.storages.InMemoryStorage()
    add_source(storage)
    spec = _spec(
        {"start_from": {"study": "old/mars-pgm", "top": 5}, "enqueue": [{"radius": 0.1}]},
        budget={"n_trials": 2},
    )
    mars = _mars(create_studies(spec, storage, groups=GROUPS))
    assert tickets(mars) == [
        {"radius": 1.0, "head_radius": 4.0},
        {"radius": 0.4, "head_radius": 10.0},
    ]


def test_a_minimised_source_gives_its_lowest_values() -> None:
    storage = optuna.storages.InMemoryStorage()
    add_source(storage, direction="minimize")
    spec = _spec({"start_from": {"study": "old/mars-pgm", "top": 2}}, budget={"n_trials": 3})
    mars = _mars(create_studies(spec, storage, groups=GROUPS))
    assert tickets(mars)[:2] == [
        {"radius": 0.6, "head_radius": 6.0},
        {"radius": 0.2, "head_radius": 2.0},
    ]


def test_duplicates_after_clipping_are_enqueued_once(capsys: pytest.CaptureFixture[str]) -> None:
    storage = optuna.storages.InMemoryStorage()
    add_source(
        storage,
        trials=[
            (0.9, {"radius": 2.0, "head_radius": 5.0}),
            (0.8, {"radius": 3.0, "head_radius": 5.0}),  # clipped onto trial 0's point
            (0.7, {"radius": 0.1, "head_radius": 3.0}),  # the spec's enqueue point
        ],
    )
    add_source(storage, "older/mars-pgm", [(0.6, {"radius": 1.0, "head_radius": 5.0})])
    spec = _spec(
        {
            "start_from": [{"spec": "old", "top": 3}, {"spec": "older"}],
            "enqueue": [{"radius": 0.1, "head_radius": 3.0}],
        },
        budget={"n_trials": 4},
    )
    mars = _mars(create_studies(spec, storage, groups=GROUPS))
    assert tickets(mars) == [
        {"radius": 1.0, "head_radius": 5.0},
        {"radius": 0.1, "head_radius": 3.0},
        {},
        {},
    ]
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert "trial 1 already enqueued" in lines[0]
    assert "trial 2 already enqueued" in lines[0]
    assert lines[1] == (
        "[new/mars-pgm] starts from older/mars-pgm: no new point; trial 0 already enqueued"
    )


def test_a_choice_takes_the_nearest_number_and_skips_an_unknown_category(
    capsys: pytest.CaptureFixture[str],
) -> None:
    storage = optuna.storages.InMemoryStorage()
    add_source(
        storage,
        "old/pgm",
        [(0.9, {"norm": "l2", "radius": 0.2}), (0.8, {"norm": "frob", "head_radius": 2.5})],
    )
    data = tiny_digits_spec("new", recipe="digits.yaml", budget={"n_trials": 2}, methods={
        "pgm": {"norm": ["mars", "frob"], "radius": {"low": 0.01, "high": 1.0},
                "head_radius": [1.0, 3.0], "start_from": {"spec": "old", "top": 2}},
    })  # fmt: skip
    spec = spec_from_dict(data, root=str(ROOT / "configs"))
    (pgm,) = create_studies(spec, storage, groups=GROUPS)
    assert tickets(pgm) == [{"norm": "frob", "head_radius": 3.0}, {}]
    assert capsys.readouterr().err.splitlines() == [
        "[new/pgm] starts from old/pgm: trial 1 (its best 2); "
        "skipped trial 0 (norm 'l2' is not one of 'mars', 'frob'); "
        "trial 1 clipped into the spec: head_radius 2.5 -> 3"
    ]


def test_a_shared_radius_gives_every_group_of_an_independent_space() -> None:
    storage = optuna.storages.InMemoryStorage()
    add_source(storage, trials=[(0.9, {"radius": 0.2, "radius.block9": 0.5, "head_radius": 2.0})])
    spec = _spec(
        {"groups": "independent", "radius.block1": {"low": 0.3, "high": 1.0},
         "start_from": {"spec": "old"}},
        budget={"n_trials": 1},
    )  # fmt: skip
    mars = _mars(create_studies(spec, storage, groups=GROUPS))
    assert tickets(mars) == [
        {"radius.block1": 0.3, "radius.block2": 0.2, "radius.block3": 0.2, "head_radius": 2.0}
    ]


def test_radii_in_other_units_are_warned_of(capsys: pytest.CaptureFixture[str]) -> None:
    storage = optuna.storages.InMemoryStorage()
    add_source(storage, relative=False)
    create_studies(_spec({"start_from": {"spec": "old"}}), storage, groups=GROUPS)
    assert (
        capsys.readouterr()
        .err.rstrip()
        .endswith("beware: its radii were absolute, this space's are relative")
    )


def test_a_warm_start_point_comes_first_then_the_earlier_studies() -> None:
    storage = optuna.storages.InMemoryStorage()
    add_source(storage, trials=[(0.9, {"radius": 0.2, "head_radius": 2.0})])
    spec = _spec(
        {"warm_start": "ftp", "start_from": {"spec": "old"}, "enqueue": [{"radius": 0.1}]},
        budget={"n_trials": 4},
        methods={"ftp": {"k": {"low": 0.5, "high": 1.0}}},
    )
    created = create_studies(spec, storage, methods=["mars-pgm"], groups=GROUPS)
    assert tickets(created[0]) == []  # the budget waits for ftp
    enqueue_warm_start(spec, storage, "mars-pgm", groups=GROUPS, source_ran_here=False)
    assert tickets(created[0]) == [{"radius": 0.2, "head_radius": 2.0}, {"radius": 0.1}, {}, {}]


# --- once, at creation ------------------------------------------------------------------------


def test_joining_reads_no_source_and_enqueues_nothing_again(tmp_path: Path) -> None:
    old = tmp_path / "old.db"
    source = add_source(open_storage(f"sqlite:///{old}"))
    storage = open_storage(f"sqlite:///{tmp_path}/new.db")
    spec = _spec(
        {"start_from": {"study": "old/mars-pgm", "storage": f"sqlite:///{old}"}},
        budget={"n_trials": 2},
    )
    mars = _mars(create_studies(spec, storage, groups=GROUPS))
    assert tickets(mars) == [{"radius": 1.0, "head_radius": 4.0}, {}]
    assert mars.user_attrs[START_ATTR][0]["storage"] == f"sqlite:///{old}"
    source.add_trial(optuna.trial.create_trial(value=1.0, params={}, distributions={}))
    old.unlink()  # a source gone since creation: nothing to read
    again = _mars(create_studies(spec, storage, groups=GROUPS))
    assert tickets(again) == [{"radius": 1.0, "head_radius": 4.0}, {}]


def test_start_from_is_a_starting_point_not_part_of_the_fingerprint(tmp_path: Path) -> None:
    url = "postgresql+psycopg://me:sekret@db.example/old"
    plain = _spec()
    started = _spec({"start_from": [{"study": "old/mars-pgm", "top": 2, "storage": url}]})
    assert started.fingerprint("mars-pgm") == plain.fingerprint("mars-pgm")
    assert started.start_from == {"mars-pgm": (StartSource("old/mars-pgm", 2, url),)}
    data = started.to_dict()
    assert data["methods"]["mars-pgm"]["start_from"] == [
        {
            "study": "old/mars-pgm",
            "top": 2,
            "storage": "postgresql+psycopg://me:***@db.example/old",
        }
    ]
    assert "sekret" not in str(data)
    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    (study,) = create_studies(plain, storage, methods=["mars-pgm"], groups=GROUPS)
    check_compatible(study, started, "mars-pgm")  # the study goes on with a new start_from


def test_a_spec_level_default_names_each_methods_study() -> None:
    spec = _spec(
        start_from={"spec": "old", "top": 2},
        methods={
            "l2-sp": {
                "alpha": {"low": 1e-4, "high": 1.0},
                "beta": {"low": 1e-4, "high": 1.0},
                "start_from": [],
            }
        },
    )
    assert spec.start_from == {"mars-pgm": (StartSource("old/mars-pgm", 2),)}  # not standard
    data = spec.to_dict()
    data.pop("base_recipe")
    assert spec_from_dict(data, root=str(ROOT / "configs")) == spec


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"start_from": {"study": "a/b"}}, "start_from: at the spec's level an entry names a"),
        ({"methods": {"standard": {"start_from": {"spec": "a"}}}}, "standard searches nothing"),
        ({"methods": {"mars-pgm": {**MARS, "start_from": {"spec": "a", "study": "a/b"}}}},
         r"start_from\[0\] must name a study or a spec"),
        ({"methods": {"mars-pgm": {**MARS, "start_from": {"spec": "a", "top": 0}}}},
         r"start_from\[0\]\.top must be >= 1, got 0"),
        ({"methods": {"mars-pgm": {**MARS, "start_from": [{"spec": "a", "k": 2}]}}},
         r"unknown key methods\.mars-pgm\.start_from\[0\]\.k"),
        ({"methods": {"mars-pgm": {**MARS, "start_from": "a/b"}}}, "must be a list of"),
    ],
)  # fmt: skip
def test_a_bad_entry_is_refused_when_the_spec_loads(changes: dict[str, Any], message: str) -> None:
    data = tiny_digits_spec("new", recipe="digits.yaml", **changes)
    with pytest.raises(ConfigError, match=message):
        spec_from_dict(data, root=str(ROOT / "configs"))


# --- bad sources: one line, exit 2, nothing written -------------------------------------------


def _source_db(tmp_path: Path, *, complete: bool = True) -> str:
    url = f"sqlite:///{tmp_path}/old.db"
    storage = open_storage(url)
    if complete:
        add_source(storage)
    else:
        optuna.create_study(study_name="old/mars-pgm", storage=storage)
    return url


BAD_SOURCES: list[tuple[str, dict[str, Any], str]] = [
    ("missing study", {"study": "old/mars-pmg"},
     "study old/mars-pmg does not exist in sqlite:///OLD; did you mean old/mars-pgm?"),
    ("missing file", {"study": "old/mars-pgm", "storage": "sqlite:///nowhere/x.db"},
     "storage sqlite:///nowhere/x.db: no such file nowhere/x.db"),  # not "tether run creates"
    ("unreachable server", {"study": "old/mars-pgm",
                            "storage": "postgresql+psycopg://me:sekret@127.0.0.1:1/old"},
     "cannot open storage postgresql+psycopg://me:***@127.0.0.1:1/old"),
    ("no complete trial", {"study": "old/mars-pgm", "empty": True},
     "study old/mars-pgm in sqlite:///OLD has no complete trial to start from"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("source", "expected"), [c[1:] for c in BAD_SOURCES], ids=[c[0] for c in BAD_SOURCES]
)
def test_a_bad_source_is_one_line_exit_2_and_writes_no_study(
    source: dict[str, Any],
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    old = _source_db(tmp_path, complete=not source.pop("empty", False))
    source = {"storage": old, **source}
    recipe = str(ROOT / "configs" / "digits.yaml")
    methods = {"standard": {}, "mars-pgm": {**MARS, "start_from": source}}
    spec = write_spec(tmp_path, tiny_digits_spec("new", recipe=recipe, methods=methods))
    new = f"sqlite:///{tmp_path}/new.db"
    assert main(["--storage", new, "run", str(spec), "--create-only"]) == 2
    err = capsys.readouterr().err
    (line,) = err.splitlines()
    prefix = "tether: error: methods.mars-pgm.start_from: "
    assert line.startswith(prefix + expected.replace("sqlite:///OLD", old))
    assert "sekret" not in err
    assert "creates it" not in err
    assert study_names(open_storage(new, create=False)) == set()


def test_create_only_enqueues_from_another_storage_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    add_source(open_storage("sqlite:///old.db"))  # relative: from the working directory
    recipe = str(ROOT / "configs" / "digits.yaml")
    start = {"study": "old/mars-pgm", "storage": "sqlite:///old.db", "top": 2}
    methods = {"standard": {}, "mars-pgm": {**MARS, "start_from": start}}
    spec = write_spec(tmp_path, tiny_digits_spec("new", recipe=recipe, methods=methods))
    assert main(["--storage", "sqlite:///new.db", "run", str(spec), "--create-only"]) == 0
    err = capsys.readouterr().err
    assert "[new/mars-pgm] starts from old/mars-pgm in sqlite:///old.db: trials 1, 3" in err
    mars = optuna.load_study(study_name="new/mars-pgm", storage="sqlite:///new.db")
    assert tickets(mars) == [
        {"radius": 1.0, "head_radius": 4.0},
        {"radius": 0.4, "head_radius": 10.0},
    ]


def test_a_source_in_postgresql(pg_database: str, tmp_path: Path) -> None:
    add_source(open_storage(pg_database), trials=[(0.8, {"radius": 0.25, "head_radius": 2.0})])
    spec = _spec({"start_from": {"spec": "old", "storage": pg_database}}, budget={"n_trials": 1})
    storage = open_storage(f"sqlite:///{tmp_path}/new.db")
    mars = _mars(create_studies(spec, storage, groups=GROUPS))
    assert tickets(mars) == [{"radius": 0.25, "head_radius": 2.0}]
