"""Samplers and pruners by name: registries, seed policy per worker, Optuna 5 defaults."""

from __future__ import annotations

import warnings

import optuna
import pytest

from tether.errors import ConfigError
from tether.finetune.config import from_dict
from tether.search.execution.runner import seed_offset
from tether.search.samplers import SEED_OFFSETS
from tether.search.samplers import PrunerConfig
from tether.search.samplers import SamplerConfig
from tether.search.samplers import list_pruners
from tether.search.samplers import list_samplers
from tether.search.samplers import make_pruner
from tether.search.samplers import make_sampler
from tether.search.samplers import offset_seed
from tether.search.samplers import register_pruner
from tether.search.samplers import register_sampler
from tether.search.samplers import repeat_seed


def _first_point(cfg: SamplerConfig, worker: int) -> float:
    study = optuna.create_study(sampler=make_sampler(cfg, offset=worker, n_trials=20))
    return study.ask().suggest_float("x", 1e-3, 1.0, log=True)


def test_registries_list_the_design_names() -> None:
    assert list_samplers() == ["cmaes", "gp", "random", "tpe"]
    assert list_pruners() == ["hyperband", "median", "none"]


@pytest.mark.parametrize(
    ("cls", "data", "needles"),
    [
        (SamplerConfig, {"name": "bayes"}, ["sampler.name", "'bayes'", "tpe", "gp", "cmaes"]),
        (SamplerConfig, {"seed": -1}, ["sampler.seed", "-1"]),
        (SamplerConfig, {"seed": "x"}, ["sampler.seed", "'x'"]),
        (PrunerConfig, {"name": "asha"}, ["pruner.name", "'asha'", "median", "hyperband"]),
        (PrunerConfig, {"n_warmup_steps": -2}, ["pruner.n_warmup_steps", "-2"]),
        (PrunerConfig, {"n_startup_trials": -1}, ["pruner.n_startup_trials"]),
    ],
)
def test_bad_configs_name_the_key_and_the_choices(
    cls: type, data: dict[str, object], needles: list[str]
) -> None:
    prefix = "sampler." if cls is SamplerConfig else "pruner."
    with pytest.raises(ConfigError) as info:
        from_dict(cls, data, prefix=prefix)
    for needle in needles:
        assert needle in str(info.value)


def test_duplicate_registration_raises() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_sampler("tpe")(lambda cfg, n: optuna.samplers.RandomSampler(seed=cfg.seed))
    with pytest.raises(ValueError, match="already registered"):
        register_pruner("none")(lambda cfg, epochs: optuna.pruners.NopPruner())


@pytest.mark.parametrize("name", ["tpe", "gp", "random"])
def test_every_sampler_builds_without_deprecated_arguments(name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sampler = make_sampler(SamplerConfig(name=name, seed=3), offset=0, n_trials=20)
    assert isinstance(sampler, optuna.samplers.BaseSampler)


def test_cmaes_builds() -> None:  # the cmaes extra, which make test installs
    assert isinstance(
        make_sampler(SamplerConfig(name="cmaes"), offset=0, n_trials=20),
        optuna.samplers.CmaEsSampler,
    )


def test_tpe_keeps_the_optuna5_defaults_but_sizes_its_start_up_to_the_budget() -> None:
    sampler = make_sampler(SamplerConfig(), offset=0, n_trials=20)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._constant_liar is True
    assert sampler._multivariate is None  # None = multivariate for one objective in Optuna 5
    assert sampler._n_startup_trials == 5  # a quarter of 20 (Optuna's own default: 10)


@pytest.mark.parametrize(("n_trials", "startup"), [(1, 1), (4, 1), (8, 2), (20, 5), (41, 10)])
def test_the_default_start_up_is_a_quarter_of_the_budget_up_to_optunas_ten(
    n_trials: int, startup: int
) -> None:
    sampler = make_sampler(SamplerConfig(), offset=0, n_trials=n_trials)
    assert sampler._n_startup_trials == startup  # type: ignore[attr-defined]


def test_the_spec_may_name_the_start_up_and_independent_tpe() -> None:
    cfg = from_dict(
        SamplerConfig, {"n_startup_trials": 10, "multivariate": False}, prefix="sampler."
    )
    sampler = make_sampler(cfg, offset=0, n_trials=20)
    assert (sampler._n_startup_trials, sampler._multivariate) == (10, False)  # type: ignore[attr-defined]
    gp = make_sampler(SamplerConfig(name="gp", n_startup_trials=3), offset=0, n_trials=20)
    assert gp._n_startup_trials == 3  # type: ignore[attr-defined]
    cmaes = make_sampler(SamplerConfig(name="cmaes"), offset=0, n_trials=20)
    assert cmaes._n_startup_trials == 5  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"n_startup_trials": -1}, "sampler.n_startup_trials must be >= 0"),
        ({"name": "random", "n_startup_trials": 3}, "does not apply to the random sampler"),
        ({"name": "gp", "multivariate": False}, "applies to tpe only"),
    ],
)
def test_sampler_options_that_cannot_apply_are_bad_input(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict(SamplerConfig, data, prefix="sampler.")


def test_offset_seed_policy() -> None:
    assert offset_seed(None, 0) is None
    assert offset_seed(None, 7) is None
    assert offset_seed(10, 0) == 10
    assert offset_seed(10, 5) == 15
    assert 0 <= offset_seed(2**32 - 1, 3) < 2**32  # type: ignore[operator]
    with pytest.raises(ValueError, match="offset"):
        offset_seed(1, -1)


def test_a_repeat_starts_one_offset_range_further_and_the_first_keeps_the_seed() -> None:
    assert repeat_seed(42, 0) == 42
    assert repeat_seed(42, 1) == 42 + SEED_OFFSETS
    assert repeat_seed(None, 3) is None
    with pytest.raises(ValueError, match="repeat"):
        repeat_seed(1, -1)


def test_the_workers_of_two_repeats_never_share_a_seed() -> None:
    """Any joining process's offset (``seed_offset``) keeps it inside its repeat's seeds."""
    last = SEED_OFFSETS - 1
    assert 0 <= seed_offset() <= last
    for repeat in range(3):
        lowest = offset_seed(repeat_seed(42, repeat), 0)
        highest = offset_seed(repeat_seed(42, repeat), last)
        assert highest < repeat_seed(42, repeat + 1)  # type: ignore[operator]
        assert lowest == repeat_seed(42, repeat)


@pytest.mark.parametrize("name", ["tpe", "random"])
def test_workers_never_share_a_seed_and_a_worker_repeats_itself(name: str) -> None:
    cfg = SamplerConfig(name=name, seed=42)
    assert _first_point(cfg, 0) == _first_point(cfg, 0)
    assert _first_point(cfg, 1) == _first_point(cfg, 1)
    assert len({_first_point(cfg, w) for w in range(4)}) == 4


def test_no_seed_is_random_per_process() -> None:
    cfg = SamplerConfig(name="random", seed=None)
    assert _first_point(cfg, 0) != _first_point(cfg, 0)


def test_pruners() -> None:
    median = make_pruner(PrunerConfig(n_startup_trials=3, n_warmup_steps=7), epochs=30)
    assert isinstance(median, optuna.pruners.MedianPruner)
    assert (median._n_startup_trials, median._n_warmup_steps) == (3, 7)
    hyperband = make_pruner(PrunerConfig(name="hyperband"), epochs=30)
    assert isinstance(hyperband, optuna.pruners.HyperbandPruner)
    assert (hyperband._min_resource, hyperband._max_resource) == (1, 30)
    assert isinstance(make_pruner(PrunerConfig(name="none"), epochs=1), optuna.pruners.NopPruner)
    with pytest.raises(ValueError, match="epochs"):
        make_pruner(PrunerConfig(), epochs=0)


@pytest.mark.parametrize(("epochs", "warmup"), [(1, 0), (3, 1), (30, 8), (80, 20)])
def test_the_default_median_pruner_waits_a_quarter_of_the_epochs(epochs: int, warmup: int) -> None:
    median = make_pruner(PrunerConfig(), epochs=epochs)
    assert (median._n_startup_trials, median._n_warmup_steps) == (5, warmup)  # type: ignore[attr-defined]
    explicit = make_pruner(PrunerConfig(n_warmup_steps=0), epochs=epochs)
    assert explicit._n_warmup_steps == 0  # type: ignore[attr-defined]
