"""Creating and joining studies: devices, and refusing what does not fit an existing study."""

from __future__ import annotations

from pathlib import Path
from typing import Any
import warnings

import optuna
import pytest

from tests.conftest import ROOT
from tether.errors import ConfigError
from tether.search.execution.launcher import Launcher
from tether.search.execution.runner import Search
from tether.search.execution.slots import parse_devices
from tether.search.execution.studies import VERSION_ATTR
from tether.search.execution.studies import create_studies
from tether.search.execution.studies import enqueue_warm_start
from tether.search.spec import StudySpec
from tether.search.spec import spec_from_dict
from tether.search.storage import open_storage
from tether.search.storage import study_names


GROUPS = ["block1", "block2", "block3"]


def _spec(**changes: Any) -> StudySpec:
    data: dict[str, Any] = {
        "name": "drv",
        "recipe": str(ROOT / "configs" / "digits.yaml"),
        "set": {"train.epochs": 3},
        "budget": {"n_trials": 2},
        "methods": {
            "mars-pgm": {
                "relative": True,
                "radius": {"low": 0.05, "high": 1.0},
                "head_radius": {"low": 1.0, "high": 10.0},
            }
        },
    }
    data.update(changes)
    return spec_from_dict(data)


def test_devices_make_slots() -> None:
    assert [s.name for s in parse_devices("cpu", 2)] == ["cpu", "cpu"]
    slots = parse_devices("0,1", 2)
    assert [(s.name, s.visible_devices) for s in slots] == [
        ("cuda:0", "0"), ("cuda:0", "0"), ("cuda:1", "1"), ("cuda:1", "1"),
    ]  # fmt: skip
    for bad in ("gpu", "0,x", ""):
        with pytest.raises(ConfigError, match="--devices"):
            parse_devices(bad, 1)
    with pytest.raises(ConfigError, match="--trials-per-device"):
        parse_devices("cpu", 0)


def test_a_changed_search_space_is_refused_naming_the_change(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    create_studies(_spec(), storage)
    wider = _spec(methods={"mars-pgm": {"relative": True, "radius": {"low": 0.05, "high": 2.0},
                                        "head_radius": {"low": 1.0, "high": 10.0}}})  # fmt: skip
    with pytest.raises(ConfigError, match=r"space\.radius\.high: 1\.0 -> 2\.0"):
        create_studies(wider, storage)
    longer = _spec(set={"train.epochs": 4})
    with pytest.raises(ConfigError, match=r"recipe\.train\.epochs: 3 -> 4"):
        create_studies(longer, storage)


def test_a_refused_spec_writes_nothing(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    create_studies(_spec(), storage)
    changed = _spec(
        set={"train.epochs": 4},
        methods={**_spec().to_dict()["methods"], "standard": {}},
    )
    with pytest.raises(ConfigError):
        create_studies(changed, storage)
    assert study_names(storage) == {"drv/mars-pgm"}


def test_new_starting_points_and_budgets_keep_the_study(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    create_studies(_spec(), storage)
    again = _spec(budget={"n_trials": 5})
    create_studies(again, storage)  # same space and recipe: accepted, budget enqueued once
    study = optuna.load_study(study_name="drv/mars-pgm", storage=storage)
    assert len(study.trials) == 2


def test_a_created_study_labels_its_value_val_accuracy_and_keeps_it() -> None:
    storage = optuna.storages.InMemoryStorage()
    (study,) = create_studies(_spec(), storage, groups=GROUPS)
    assert study.metric_names == ["val accuracy"]
    (again,) = create_studies(_spec(), storage, groups=GROUPS)  # joining: nothing changes
    assert again.metric_names == ["val accuracy"]
    assert len(again.get_trials(deepcopy=False)) == 2


def test_a_worker_with_another_optuna_major_refuses_to_join(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    (study,) = create_studies(_spec(), storage)
    study.set_user_attr(VERSION_ATTR, {"tether": "0.1.0", "optuna": "4.6.0"})
    with Launcher() as launcher, pytest.raises(ConfigError, match="optuna 4.6.0"):
        Search(_spec(), storage=storage, launcher=launcher,
               slots=parse_devices("cpu", 1), log_dir=tmp_path)  # fmt: skip


def test_a_search_sizes_the_default_start_up_and_warm_up_to_its_budget(tmp_path: Path) -> None:
    spec = _spec(budget={"n_trials": 8}, set={"train.epochs": 12})
    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    create_studies(spec, storage)
    with Launcher() as launcher:
        search = Search(spec, storage=storage, launcher=launcher,
                        slots=parse_devices("cpu", 1), log_dir=tmp_path)  # fmt: skip
        (state,) = search.states
    assert state.study.sampler._n_startup_trials == 2  # type: ignore[union-attr]
    assert state.study.pruner._n_warmup_steps == 3  # type: ignore[attr-defined]


# --- warm starts ------------------------------------------------------------------------------


WARM_METHODS: dict[str, Any] = {
    "mars-pgm": {
        "groups": "independent",
        "relative": True,
        "radius": {"low": 0.001, "high": 1.0},
        "head_radius": {"low": 1.0, "high": 10.0},
        "enqueue": [{"radius": 0.1, "head_radius": 3.0}],
        "warm_start": "ftp",
    },
    "ftp": {"k": {"low": 0.5, "high": 1.0}},
}
LEARNED = {
    "absolute": {"block1": 0.04, "block2": 0.2, "block3": 0.5},
    "relative": {"block1": 0.003, "block2": 0.02, "block3": 0.3},
}


def _claim(study: optuna.Study) -> optuna.Trial:
    """Claim ``study``'s next ticket, as a worker does (this stand-in has no heartbeat)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
        return study.ask()


def _finish_learning_trial(study: optuna.Study) -> None:
    """Run ``study``'s next ticket as an FTP worker would: radii learned, the head moved."""
    trial = _claim(study)
    trial.suggest_float("k", 0.5, 1.0)
    trial.set_user_attr("learned_radii", LEARNED)
    trial.set_user_attr("distances", {"block1": 0.01, "head": 12.0})
    study.tell(trial, 0.5)


def test_a_warm_start_is_enqueued_from_the_finished_source_once(tmp_path: Path) -> None:
    spec = _spec(methods=WARM_METHODS, budget={"n_trials": 3})
    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    mars, ftp = create_studies(spec, storage, groups=GROUPS)
    assert mars.get_trials() == []  # its first ticket waits for what ftp learns
    assert len(ftp.get_trials()) == 3

    def warm_start(ran_here: bool) -> str | None:
        return enqueue_warm_start(
            spec, storage, "mars-pgm", groups=GROUPS, source_ran_here=ran_here
        )

    _finish_learning_trial(ftp)
    assert "waits for drv/ftp" in str(warm_start(False))  # two of its tickets still wait
    elsewhere = _claim(ftp)
    assert "waits for drv/ftp" in str(warm_start(True))  # one runs in another process
    ftp.tell(elsewhere, 0.1)
    assert mars.get_trials() == []
    line = warm_start(True)  # its tickets left behind here: past budget.timeout
    assert line == (
        "[drv/mars-pgm] first trial: the radii drv/ftp trial 0 learned; "
        "clipped into the spec: head_radius 12 -> 10"
    )
    first, known, sampled = [t.system_attrs.get("fixed_params") for t in mars.get_trials()]
    assert first == {f"radius.{g}": r for g, r in LEARNED["relative"].items()} | {
        "head_radius": 10.0
    }
    assert known == {"radius.block1": 0.1, "radius.block2": 0.1, "radius.block3": 0.1,
                     "head_radius": 3.0}  # fmt: skip
    assert sampled == {}
    assert warm_start(True) is None
    assert len(mars.get_trials()) == 3


def test_without_the_source_study_the_sampler_starts(tmp_path: Path) -> None:
    spec = _spec(methods=WARM_METHODS, budget={"n_trials": 2})
    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    (mars,) = create_studies(spec, storage, methods=["mars-pgm"], groups=GROUPS)
    line = enqueue_warm_start(spec, storage, "mars-pgm", groups=GROUPS, source_ran_here=False)
    assert line == "[drv/mars-pgm] no radii learned in drv/ftp to start from; the sampler starts"
    assert mars.get_trials()[0].system_attrs["fixed_params"]["radius.block1"] == 0.1


# --- creators started at once -----------------------------------------------------------------


def _create(url: str, budget: int, barrier: Any) -> None:
    """One creating process, as ``tether run --create-only``: it loads the spec and opens the
    storage, waits until every creator is ready, then creates the studies."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = _spec(budget={"n_trials": budget}, methods=dict(RACE_METHODS))
    storage = open_storage(url)
    barrier.wait(30)
    create_studies(spec, storage, groups=[])


RACE_METHODS = {
    "standard": {"lr": {"low": 1e-4, "high": 1e-2}},
    "mars-pgm": {
        "radius": {"low": 0.05, "high": 1.0},
        "head_radius": {"low": 1.0, "high": 10.0},
        "enqueue": [{"radius": 0.1, "head_radius": 3.0}],
    },
}


@pytest.fixture(params=["postgresql", "journal"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "journal":
        return f"journal:{tmp_path / 'race.journal'}"
    url: str = request.getfixturevalue("pg_database")
    return url


def test_creators_started_at_once_enqueue_the_budget_once(shared_url: str) -> None:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    creators, budget = 4, 6
    barrier = context.Barrier(creators)
    processes = [
        context.Process(target=_create, args=(shared_url, budget, barrier))
        for _ in range(creators)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
    assert [p.exitcode for p in processes] == [0] * creators
    storage = open_storage(shared_url, create=False)
    for method in RACE_METHODS:
        study = optuna.load_study(study_name=f"drv/{method}", storage=storage)
        trials = study.get_trials(deepcopy=False)
        assert len(trials) == budget, method
        known = [t for t in trials if t.user_attrs.get("tether:known_good")]
        assert len(known) == (1 if method == "mars-pgm" else 0)
