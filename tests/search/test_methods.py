"""Methods: the registry, deep_merge, and MethodSpace.suggest over real Optuna trials."""

from __future__ import annotations

import math
from typing import Any

import optuna
import pytest

from tests.conftest import ROOT
from tether.errors import ConfigError
from tether.finetune.config import read_yaml
from tether.finetune.recipe import Recipe
from tether.finetune.recipe import recipe_from_dict
from tether.jsondata import deep_merge
from tether.search.methods import GROUP_MODES
from tether.search.methods import PARAM_PATHS
from tether.search.methods import GroupMode
from tether.search.methods import Method
from tether.search.methods import get_method
from tether.search.methods import list_methods
from tether.search.methods import register_method
from tether.search.spec import Choice
from tether.search.spec import FloatRange
from tether.search.spec import IntRange
from tether.search.spec import MethodSpace


GROUPS = ("block1", "block2", "block3")  # the digits CNN's pretrained groups
RANGES: dict[str, FloatRange | IntRange | Choice] = {
    "lr": FloatRange(1e-4, 1e-2),
    "radius": FloatRange(0.01, 2.0),
    "head_radius": FloatRange(0.5, 30.0),
    "scale": FloatRange(0.5, 4.0),
    "alpha": FloatRange(1e-4, 1.0),
    "beta": FloatRange(1e-4, 1.0),
    "norm": Choice(("mars", "frob")),
    "correct_epoch": IntRange(1, 10),
    "correct_threshold": FloatRange(0.5, 0.99),
    "reweight_epoch": IntRange(1, 10),
    "reweight_temperature": FloatRange(0.5, 4.0),
    "k": FloatRange(0.1, 1.0, log=False),
    "radius_lr": FloatRange(1e-3, 1e-1),
    "proj_lr": FloatRange(1e-3, 1e-1),
    "proj_freq": IntRange(1, 4),
    "holdout": FloatRange(0.05, 0.5),
    "lam": FloatRange(0.0, 2.0, log=False),
}


def _digits() -> dict[str, Any]:
    return read_yaml(str(ROOT / "configs" / "digits.yaml"))


def _cases() -> list[tuple[str, GroupMode]]:
    cases: list[tuple[str, GroupMode]] = []
    for name in list_methods():
        modes = GROUP_MODES if get_method(name).constrained else ("shared",)
        cases += [(name, mode) for mode in modes]
    return cases


def _space(name: str, groups: GroupMode, **extra: FloatRange | IntRange | Choice) -> MethodSpace:
    method = get_method(name)
    params = {p: RANGES[p] for p in method.params if method.accepts(p, groups)}
    return MethodSpace(name, {**params, **extra}, groups=groups, relative=True)


def _expected_names(name: str, groups: GroupMode) -> set[str]:
    method = get_method(name)
    names = {p for p in method.params if method.accepts(p, groups)}
    if groups == "independent":
        names = (names - {"radius"}) | {f"radius.{g}" for g in GROUPS}
    return names


# ---------------------------------------------------------------------------- registry


def test_registry_holds_every_method_of_the_design() -> None:
    expected = {"standard", "mars-pgm", "frob-pgm", "pgm", "mars-sp", "l2-sp", "frob-sp", "delta"}
    expected |= {"ftp", "tpgm", "spd", "lp-ft", "wise-ft"}
    assert expected <= set(list_methods())
    for name in list_methods():
        method = get_method(name)
        assert method.name == name
        assert method.description
        assert "lr" in method.params


def test_unknown_method_lists_the_registry() -> None:
    with pytest.raises(ConfigError, match="mars-pgm") as info:
        get_method("mars-pgn")
    assert "'mars-pgn'" in str(info.value)
    assert "l2-sp" in str(info.value)


def test_duplicate_registration_raises() -> None:
    def again() -> Method:
        return Method("l2-sp", "again", patch={}, params=("lr",))

    with pytest.raises(ValueError, match="already registered"):
        register_method(again)
    assert get_method("l2-sp").description != "again"


def test_a_method_with_an_unknown_parameter_is_refused() -> None:
    def odd() -> Method:
        return Method("odd-method", "odd", patch={}, params=("momentum",))

    with pytest.raises(ValueError, match="momentum"):
        register_method(odd)
    assert "odd-method" not in list_methods()


def test_fixed_patches() -> None:
    assert get_method("mars-pgm").patch == {
        "constraint": {"norm": "mars", "learn": "none"},
        "penalty": {"name": "none"},
        "train": {
            "correct_epoch": 0,
            "reweight_epoch": 0,
            "linear_probe": False,
            "bn_eval": False,
            "wise": None,
        },
    }
    assert get_method("delta").patch["penalty"] == {"name": "delta"}
    assert get_method("standard").patch["constraint"]["norm"] == "none"


@pytest.mark.parametrize("name", ["standard", "l2-sp", "mars-pgm", "frob-pgm", "bss", "l1-sp"])
def test_only_rsl_corrects_or_reweights_labels(name: str) -> None:
    train = get_method(name).patch["train"]
    assert train["correct_epoch"] == 0
    assert train["reweight_epoch"] == 0


def test_rsl_is_a_frobenius_constraint_with_the_papers_label_settings() -> None:
    rsl = get_method("rsl")
    assert rsl.patch["constraint"] == {"norm": "frob", "learn": "none"}
    assert rsl.patch["train"] == {
        "correct_epoch": 10,
        "correct_threshold": 0.9,
        "reweight_epoch": 5,
        "reweight_temperature": 2.0,
        "linear_probe": False,
        "bn_eval": False,
        "wise": None,
    }
    assert rsl.constrained
    assert rsl.accepts("scale", "geometric")
    for param in ("correct_epoch", "correct_threshold", "reweight_epoch", "reweight_temperature"):
        assert rsl.accepts(param, "geometric")
    assert not get_method("frob-pgm").accepts("correct_epoch", "shared")


def test_rsl_suggests_integer_epochs_into_the_train_section() -> None:
    space = MethodSpace(
        method="rsl",
        params={
            "radius": FloatRange(0.05, 10.0),
            "scale": FloatRange(1.0, 5.0),
            "head_radius": FloatRange(1.0, 30.0),
            "correct_epoch": IntRange(5, 40),
            "reweight_temperature": FloatRange(0.5, 4.0),
        },
        groups="geometric",
    )
    patch = space.suggest(optuna.create_study().ask(), groups=["a", "b"])
    assert isinstance(patch["train"]["correct_epoch"], int)
    assert 5 <= patch["train"]["correct_epoch"] <= 40
    assert 0.5 <= patch["train"]["reweight_temperature"] <= 4.0
    assert patch["train"]["reweight_epoch"] == 5  # not searched: the paper's value
    assert patch["constraint"]["norm"] == "frob"
    assert patch["constraint"]["scale"] >= 1.0


def test_bss_searches_its_trade_off_only() -> None:
    bss = get_method("bss")
    assert bss.required == ("alpha",)
    assert not bss.accepts("beta", "shared")


# ---------------------------------------------------------------------------- suggest


@pytest.mark.parametrize(("name", "groups"), _cases())
def test_suggest_gives_a_valid_recipe_with_stable_names(name: str, groups: GroupMode) -> None:
    study = optuna.create_study(direction="maximize")
    space = _space(name, groups)
    for _ in range(3):
        trial = study.ask()
        patch = space.suggest(trial, groups=GROUPS)
        recipe = recipe_from_dict(deep_merge(_digits(), patch))
        assert set(trial.params) == _expected_names(name, groups)
        for param, value in trial.params.items():
            assert space.param_for(param) is not None
            assert space.param_for(param).contains(value)  # type: ignore[union-attr]
        _check_recipe(name, groups, recipe, trial.params)
        study.tell(trial, 0.5)


def _check_recipe(name: str, groups: GroupMode, recipe: Recipe, params: dict[str, Any]) -> None:
    method = get_method(name)
    for param, value in params.items():
        if not param.startswith("radius") and param != "scale":
            section, key = PARAM_PATHS[param]
            assert getattr(getattr(recipe, section), key) == value, param
    assert recipe.penalty.name == method.patch["penalty"]["name"]
    assert recipe.constraint.learn == method.patch["constraint"]["learn"]
    if not method.constrained:
        assert recipe.constraint.norm == method.patch["constraint"]["norm"]
        assert math.isinf(recipe.constraint.head_radius)
        return
    assert recipe.constraint.relative is True
    assert recipe.constraint.norm == params.get("norm", method.patch["constraint"].get("norm"))
    if groups == "independent":
        assert recipe.constraint.radius == {g: params[f"radius.{g}"] for g in GROUPS}
        assert recipe.constraint.scale is None
    elif groups == "geometric":
        assert (recipe.constraint.radius, recipe.constraint.scale) == (
            params["radius"],
            params["scale"],
        )
    else:
        assert (recipe.constraint.radius, recipe.constraint.scale) == (params["radius"], None)


SWITCHED_ON: dict[str, Any] = {
    "constraint": {"norm": "frob", "learn": "tpgm", "radius": 0.5, "scale": 2.0},
    "penalty": {"name": "l2-sp"},
    "train": {
        "linear_probe": True,
        "bn_eval": True,
        "wise": 0.5,
        "correct_epoch": 3,
        "reweight_epoch": 3,
    },
}
"""A base recipe with what every method turns on turned on (not valid as it stands)."""


@pytest.mark.parametrize(("name", "groups"), _cases())
def test_a_method_is_the_same_whatever_the_base_recipe_switches_on(
    name: str, groups: GroupMode
) -> None:
    patch = _space(name, groups).suggest(optuna.create_study().ask(), groups=GROUPS)
    plain = recipe_from_dict(deep_merge(_digits(), patch))
    switched = recipe_from_dict(deep_merge(deep_merge(_digits(), SWITCHED_ON), patch))
    assert switched.to_dict() == plain.to_dict()


def test_learned_radii_methods_clear_the_given_radii_and_set_the_learner() -> None:
    base = deep_merge(_digits(), {"constraint": {"mode": "exact", "scale": 2.0}})
    for name, learn in (("ftp", "ftp"), ("tpgm", "tpgm")):
        space = MethodSpace(name, {"lr": FloatRange(1e-4, 1e-2)})
        patch = space.suggest(optuna.create_study().ask(), groups=GROUPS)
        constraint = recipe_from_dict(deep_merge(base, patch)).constraint
        assert (constraint.learn, constraint.norm, constraint.mode) == (learn, "mars", "rescale")
        assert constraint.radius == math.inf
        assert constraint.head_radius == math.inf
        assert constraint.scale is None
    assert [m for m in list_methods() if get_method(m).learns_radii] == ["ftp", "tpgm"]


def test_tpgm_searches_its_projection_knobs_under_their_paper_names() -> None:
    space = MethodSpace(
        "tpgm",
        {"proj_lr": FloatRange(1e-3, 1e-1), "proj_freq": IntRange(1, 8),
         "holdout": FloatRange(0.05, 0.3)},
    )  # fmt: skip
    trial = optuna.create_study().ask()
    constraint = space.suggest(trial, groups=GROUPS)["constraint"]
    assert constraint["radius_lr"] == trial.params["proj_lr"]
    assert isinstance(constraint["proj_freq"], int)
    assert constraint["holdout"] == trial.params["holdout"]


def test_spd_sets_its_optimiser_without_weight_decay() -> None:
    base = deep_merge(_digits(), {"train": {"weight_decay": 1e-4}})
    space = MethodSpace("spd", {"lam": FloatRange(0.1, 1.0)})
    trial = optuna.create_study().ask()
    train = recipe_from_dict(deep_merge(base, space.suggest(trial, groups=GROUPS))).train
    assert (train.optimizer, train.weight_decay, train.spd_lam) == (
        "spd",
        0.0,
        trial.params["lam"],
    )
    assert get_method("spd").required == ("lam",)
    assert "optimizer" not in get_method("standard").patch["train"]


def test_lp_ft_probes_with_frozen_batchnorm_and_wise_ft_interpolates() -> None:
    lp_ft = get_method("lp-ft").patch["train"]
    assert (lp_ft["linear_probe"], lp_ft["bn_eval"], lp_ft["wise"]) == (True, True, None)
    wise_ft = get_method("wise-ft").patch["train"]
    assert (wise_ft["linear_probe"], wise_ft["wise"]) == (False, "val")


@pytest.mark.parametrize("name", ["standard", "mars-pgm", "ftp", "lp-ft", "l2-sp"])
def test_the_wise_option_adds_wise_ft_to_any_method(name: str) -> None:
    plain = _space(name, "shared")
    wise = MethodSpace(name, plain.params, relative=True, wise=True)
    trial = optuna.trial.FixedTrial({p: r.ends()[0] for p, r in plain.params.items()})
    assert wise.suggest(trial, groups=GROUPS)["train"]["wise"] == "val"
    assert plain.suggest(trial, groups=GROUPS)["train"]["wise"] is None
    assert wise.to_data()["wise"] is True


def test_standard_undoes_the_recipe_constraint_and_penalty() -> None:
    base = deep_merge(_digits(), {"penalty": {"name": "l2-sp"}, "constraint": {"scale": 2.0}})
    trial = optuna.create_study().ask()
    recipe = recipe_from_dict(
        deep_merge(base, _space("standard", "shared").suggest(trial, groups=GROUPS))
    )
    assert recipe.constraint.norm == "none"
    assert math.isinf(recipe.constraint.head_radius)
    assert recipe.penalty.name == "none"


def test_shared_layout_clears_a_scale_left_in_the_recipe() -> None:
    base = deep_merge(_digits(), {"constraint": {"scale": 2.0}})
    trial = optuna.create_study().ask()
    patch = _space("mars-pgm", "shared").suggest(trial, groups=GROUPS)
    assert recipe_from_dict(deep_merge(base, patch)).constraint.scale is None


def test_fixed_options_pass_into_the_recipe_and_none_keeps_the_recipes() -> None:
    trial = optuna.create_study().ask()
    space = MethodSpace("frob-pgm", _space("frob-pgm", "shared").params, mode="exact")
    patch = space.suggest(trial, groups=GROUPS)
    recipe = recipe_from_dict(deep_merge(_digits(), patch))
    assert recipe.constraint.mode == "exact"
    assert recipe.constraint.relative is True  # configs/digits.yaml's
    assert "relative" not in patch["constraint"]


def test_independent_override_range_for_one_group() -> None:
    space = _space("mars-pgm", "independent", **{"radius.block3": FloatRange(5.0, 6.0)})
    study = optuna.create_study()
    for _ in range(5):
        trial = study.ask()
        radii = space.suggest(trial, groups=GROUPS)["constraint"]["radius"]
        assert 5.0 <= radii["block3"] <= 6.0
        assert radii["block1"] <= 2.0
        study.tell(trial, 0.0)


def test_independent_names_must_be_model_groups() -> None:
    space = _space("mars-pgm", "independent", **{"radius.layer9": FloatRange(5.0, 6.0)})
    trial = optuna.create_study().ask()
    with pytest.raises(ConfigError, match=r"radius\.layer9.*block1, block2, block3"):
        space.suggest(trial, groups=GROUPS)


def test_independent_radii_need_the_groups() -> None:
    trial = optuna.create_study().ask()
    with pytest.raises(ConfigError, match="independent"):
        _space("mars-pgm", "independent").suggest(trial, groups=())


# ---------------------------------------------------------------------------- enqueue


@pytest.mark.parametrize(
    ("name", "groups", "point"),
    [
        ("mars-pgm", "shared", {"radius": 0.1, "head_radius": 3.0}),
        ("pgm", "shared", {"norm": "frob", "radius": 0.3, "head_radius": 3.0, "lr": 1e-3}),
        ("frob-pgm", "geometric", {"radius": 0.132, "scale": 3.98, "head_radius": 10.77}),
        ("l2-sp", "shared", {"alpha": 0.0399, "beta": 0.0953}),
        ("mars-pgm", "independent", {"radius": 0.1, "radius.block2": 0.5, "head_radius": 3.0}),
    ],
)
def test_enqueued_points_are_honoured(name: str, groups: GroupMode, point: dict[str, Any]) -> None:
    space = _space(name, groups)
    study = optuna.create_study(direction="maximize")
    params = space.enqueue_params(point, groups=GROUPS)
    study.enqueue_trial(params)
    trial = study.ask()
    patch = space.suggest(trial, groups=GROUPS)
    for key, value in params.items():
        assert trial.params[key] == pytest.approx(value)
    if groups == "independent":
        assert patch["constraint"]["radius"] == {"block1": 0.1, "block2": 0.5, "block3": 0.1}


def test_enqueue_params_passes_other_layouts_through() -> None:
    point = {"radius": 0.1, "head_radius": 3.0}
    assert _space("mars-pgm", "shared").enqueue_params(point, groups=GROUPS) == point
