"""Study specs: the three shipped files load; every bad key or value is a ConfigError naming it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from tests.conftest import ROOT
from tether.errors import ConfigError
from tether.finetune.recipe import recipe_from_dict
from tether.search.samplers import SEED_OFFSETS
from tether.search.samplers import make_sampler
from tether.search.spec import Choice
from tether.search.spec import FloatRange
from tether.search.spec import IntRange
from tether.search.spec import StudySpec
from tether.search.spec import load_spec
from tether.search.spec import load_specs
from tether.search.spec import spec_from_dict
from tether.search.spec import specs_from_dict


STUDIES = ROOT / "studies"
DIGITS = str(ROOT / "configs" / "digits.yaml")
MARS = {
    "relative": True,
    "radius": {"low": 0.01, "high": 2.0},
    "head_radius": {"low": 0.5, "high": 30.0},
}
PENALTY = {"alpha": {"low": 1e-4, "high": 0.5}, "beta": {"low": 1e-4, "high": 0.5}}
ROBUST: dict[str, Any] = {
    "ftp": {"k": {"low": 0.1, "high": 1.0, "log": False}, "radius_lr": [1e-2, 1e-1]},
    "tpgm": {
        "proj_lr": {"low": 1e-3, "high": 1e-1},
        "proj_freq": {"low": 1, "high": 4},
        "holdout": {"low": 0.05, "high": 0.3},
    },
    "spd": {"lam": {"low": 0.0, "high": 2.0, "log": False}},
    "lp-ft": {"lr": {"low": 1e-4, "high": 1e-2}},
    "wise-ft": {"lr": {"low": 1e-4, "high": 1e-2}},
}
"""The learned-radius and robust fine-tuning methods, each with the parameters it searches."""


def _spec(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "t",
        "recipe": DIGITS,
        "budget": {"n_trials": 2},
        "methods": {"mars-pgm": dict(MARS), "l2-sp": dict(PENALTY)},
    }
    data.update(changes)
    return data


def _method(name: str, **space: Any) -> dict[str, Any]:
    return _spec(methods={name: space})


def _load(data: dict[str, Any]) -> StudySpec:
    return spec_from_dict(data, root=str(ROOT))


# ------------------------------------------------------------------------ shipped specs


@pytest.mark.parametrize("path", sorted(STUDIES.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_specs_load(path: Path) -> None:
    for spec in load_specs(str(path)):
        assert spec.family == path.stem
        prefix = path.stem if spec.condition is None else f"{path.stem}.{spec.condition}"
        assert spec.name == prefix
        recipe_from_dict(spec.base_recipe())
        json.dumps(spec.to_dict(), allow_nan=False)
        builtin = spec.base_recipe()["data"]["kind"] == "digits"  # no published points
        for method, space in spec.methods.items():
            assert spec.study_name(method) == f"{prefix}/{method}"
            assert len(spec.fingerprint(method)) == 64
            assert space.enqueue or space.warm_start or not space.params or builtin


def test_noise_specs_vary_the_noise_rate_per_condition() -> None:
    for stem in ("digits-noise", "indoor-resnet18-noise"):
        specs = load_specs(str(STUDIES / f"{stem}.yaml"))
        assert [s.condition for s in specs] == ["noise20", "noise40", "noise60", "noise80"]
        rates = [s.base_recipe()["data"]["noise_rate"] for s in specs]
        assert rates == [0.2, 0.4, 0.6, 0.8]
        assert {"standard", "frob-pgm", "rsl"} <= set(specs[0].methods)
        assert all(s.base_recipe()["data"]["noise"] == "symmetric" for s in specs)
    indoor = load_specs(str(STUDIES / "indoor-resnet18-noise.yaml"))
    published = [(7.80, 14.08), (8.47, 19.02), (10.76, 19.82), (9.20, 6.42)]
    for spec, (radius, head) in zip(indoor, published, strict=True):
        point = spec.methods["rsl"].enqueue[0]
        assert (point["radius"], point["head_radius"]) == (radius, head)
        assert spec.methods["frob-pgm"].enqueue[0] == {"radius": radius, "head_radius": head}


def _conditions(**conditions: Any) -> dict[str, Any]:
    return {**_spec(), "conditions": conditions}


def test_conditions_expand_into_one_spec_each_with_their_own_studies() -> None:
    data = _conditions(
        clean={"set": {"data.noise": "none", "data.noise_rate": 0.0}},
        noisy={
            "set": {"data": {"noise": "pair", "noise_rate": 0.3}},
            "methods": {"mars-pgm": {"enqueue": [{"radius": 0.5, "head_radius": 2.0}]}},
        },
    )
    clean, noisy = specs_from_dict(data, root=str(ROOT))
    assert (clean.name, clean.condition, clean.family) == ("t.clean", "clean", "t")
    assert noisy.study_name("l2-sp") == "t.noisy/l2-sp"
    assert clean.base_recipe()["data"]["noise"] == "none"
    assert noisy.base_recipe()["data"]["noise"] == "pair"
    assert noisy.base_recipe()["data"]["noise_rate"] == 0.3
    assert noisy.methods["mars-pgm"].enqueue == ({"radius": 0.5, "head_radius": 2.0},)
    assert clean.methods["mars-pgm"].enqueue == ()
    assert noisy.methods["mars-pgm"].params == clean.methods["mars-pgm"].params
    assert clean.fingerprint("mars-pgm") != noisy.fingerprint("mars-pgm")
    assert noisy.to_dict()["condition"] == "noisy"
    assert [s.name for s in specs_from_dict(_spec(), root=str(ROOT))] == ["t"]


def test_load_spec_refuses_a_file_with_several_conditions(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_conditions(a={}, b={})))
    with pytest.raises(ConfigError, match=r"several conditions \(a, b\)"):
        load_spec(str(path))
    specs = load_specs(str(path), ["conditions.b.set.train.epochs=2"])
    assert [s.base_recipe()["train"]["epochs"] for s in specs][1] == 2


def _first_radius(spec: StudySpec) -> float:
    """The radius the spec's sampler proposes first (the spec's sampler is ``random``)."""
    study = optuna.create_study(
        sampler=make_sampler(spec.sampler, offset=0, n_trials=spec.budget.n_trials)
    )
    return study.ask().suggest_float("radius", 0.01, 2.0, log=True)


def test_repeats_are_searches_of_their_own_each_with_its_seed() -> None:
    data = _spec(budget={"n_trials": 2, "repeats": 3}, sampler={"name": "random", "seed": 7})
    specs = specs_from_dict(data, root=str(ROOT))
    assert [(s.name, s.repeat, s.family) for s in specs] == [
        ("t", 0, "t"),
        ("t~r1", 1, "t"),
        ("t~r2", 2, "t"),
    ]
    assert [s.study_name("l2-sp") for s in specs] == ["t/l2-sp", "t~r1/l2-sp", "t~r2/l2-sp"]
    assert [s.sampler.seed for s in specs] == [7, 7 + SEED_OFFSETS, 7 + 2 * SEED_OFFSETS]
    assert len({_first_radius(s) for s in specs}) == 3
    assert {s.fingerprint("mars-pgm") for s in specs} == {specs[0].fingerprint("mars-pgm")}
    assert all(s.budget == specs[0].budget for s in specs)  # each its n_trials
    assert [s.to_dict().get("repeat") for s in specs] == [None, 1, 2]


def test_the_first_repeat_is_todays_search() -> None:
    """Same name, same seed, same first point: one repeat changes nothing and an existing
    storage's studies are the first repeat's."""
    today = _load(_spec(sampler={"name": "random", "seed": 7}))
    first = specs_from_dict(
        _spec(budget={"n_trials": 2, "repeats": 2}, sampler={"name": "random", "seed": 7}),
        root=str(ROOT),
    )[0]
    assert (first.name, first.repeat, first.sampler) == (today.name, 0, today.sampler)
    assert first == dataclasses.replace(today, budget=first.budget)
    assert _first_radius(first) == _first_radius(today)
    assert today.budget.repeats == 1
    assert "repeat" not in today.to_dict()


def test_repeats_without_a_seed_stay_unseeded() -> None:
    data = _spec(budget={"n_trials": 2, "repeats": 2})
    assert [s.sampler.seed for s in specs_from_dict(data, root=str(ROOT))] == [None, None]


def test_every_condition_is_repeated_its_repeats_together() -> None:
    data = _conditions(a={}, b={"set": {"data.noise": "pair", "data.noise_rate": 0.3}})
    data["budget"] = {"n_trials": 2, "repeats": 2}
    data["sampler"] = {"seed": 3}
    specs = specs_from_dict(data, root=str(ROOT))
    assert [(s.name, s.condition, s.repeat, s.sampler.seed) for s in specs] == [
        ("t.a", "a", 0, 3),
        ("t.a~r1", "a", 1, 3 + SEED_OFFSETS),
        ("t.b", "b", 0, 3),
        ("t.b~r1", "b", 1, 3 + SEED_OFFSETS),
    ]
    assert {s.family for s in specs} == {"t"}
    assert specs[3].study_name("mars-pgm") == "t.b~r1/mars-pgm"
    assert specs[3].base_recipe()["data"]["noise_rate"] == 0.3
    assert specs[3].to_dict()["condition"] == "b"


def test_load_spec_refuses_a_file_with_several_repeats(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_spec()))
    with pytest.raises(ConfigError, match=r"several repeats \(budget.repeats: 2\)"):
        load_spec(str(path), ["budget.repeats=2"])
    assert [s.name for s in load_specs(str(path), ["budget.repeats=2"])] == ["t", "t~r1"]


BAD_CONDITIONS = [
    ("not a mapping", [1, 2], ["conditions must map"]),
    ("empty", {}, ["conditions must map"]),
    ("bad name", {"a b": {}}, ["conditions.a b", "condition name"]),
    ("unknown key", {"a": {"budget": {}}}, ["unknown key conditions.a.budget", "set, methods"]),
    ("unknown method", {"a": {"methods": {"delta": {}}}}, ["conditions.a.methods.delta"]),
    ("bad recipe value", {"a": {"set": {"data.noise_rate": 2}}}, ["conditions.a", "noise_rate"]),
    (
        "bad enqueue",
        {"a": {"methods": {"l2-sp": {"enqueue": [{"alpha": 9.0}]}}}},
        ["conditions.a", "enqueue[0].alpha"],
    ),
]


@pytest.mark.parametrize(
    ("conditions", "needles"), [c[1:] for c in BAD_CONDITIONS], ids=[c[0] for c in BAD_CONDITIONS]
)
def test_bad_conditions_name_the_key(conditions: Any, needles: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        specs_from_dict({**_spec(), "conditions": conditions}, root=str(ROOT))
    for needle in needles:
        assert needle in str(info.value), str(info.value)


def test_integer_parameters_take_integer_ranges() -> None:
    rsl = {
        "groups": "shared",
        "radius": {"low": 0.05, "high": 1.0},
        "head_radius": {"low": 1.0, "high": 9.0},
        "correct_epoch": {"low": 2, "high": 20},
        "reweight_epoch": [1, 5],
    }
    space = _load(_method("rsl", **rsl)).methods["rsl"]
    assert space.params["correct_epoch"] == IntRange(2, 20, log=False)
    assert space.params["reweight_epoch"] == Choice((1, 5))
    with pytest.raises(ConfigError, match="methods.rsl.correct_epoch.low must be an integer"):
        _load(_method("rsl", **{**rsl, "correct_epoch": {"low": 2.5, "high": 20}}))
    with pytest.raises(ConfigError, match="enqueue"):
        _load(_method("rsl", **rsl, enqueue=[{"correct_epoch": 3.5}]))


def test_digits_compares_every_method() -> None:
    spec = load_spec(str(STUDIES / "digits.yaml"))
    assert set(spec.methods) == {
        "standard",
        "l2-sp",
        "mars-sp",
        "frob-sp",
        "delta",
        "mars-pgm",
        "frob-pgm",
        "pgm",
        "ftp",
        "tpgm",
        "spd",
        "lp-ft",
        "wise-ft",
    }
    assert spec.base_recipe()["data"]["noise_rate"] == 0.4
    assert spec.methods["mars-pgm"].enqueue == ({"radius": 0.1, "head_radius": 3.0},)
    assert spec.methods["mars-pgm"].relative is True


def test_flowers_carries_the_reference_ranges_and_the_papers_values() -> None:
    spec = load_spec(str(STUDIES / "flowers-resnet101.yaml"), ["set.data.root=/data/flowers"])
    assert spec.base_recipe()["data"]["root"] == "/data/flowers"
    assert spec.budget.n_trials == 20
    assert (spec.evaluation.n_seeds, spec.evaluation.refit) == (5, True)
    assert spec.methods["mars-pgm"].params["radius"] == FloatRange(1.6487, 33.115)
    assert spec.methods["delta"].params["alpha"] == FloatRange(4.54e-5, 0.368)
    assert spec.methods["mars-pgm"].enqueue == ({"radius": 6.581, "head_radius": 7.614},)
    assert spec.n_trials("standard") == 1
    assert spec.n_trials("mars-pgm") == 20


# ------------------------------------------------------------------------ the API


def test_overrides_reach_the_spec_and_through_set_the_recipe(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_spec(set={"train.epochs": 7})))
    spec = load_spec(str(path), ["budget.n_trials=3", "set.train.lr=0.01"])
    assert spec.budget.n_trials == 3
    assert spec.base_recipe()["train"]["epochs"] == 7
    assert spec.base_recipe()["train"]["lr"] == 0.01
    assert load_spec(str(path), ["set.train.epochs=2"]).base_recipe()["train"]["epochs"] == 2


def test_recipe_is_relative_to_the_spec_file(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "r.yaml").write_text(Path(DIGITS).read_text())
    (tmp_path / "studies").mkdir()
    path = tmp_path / "studies" / "s.yaml"
    path.write_text(yaml.safe_dump(_spec(recipe="../configs/r.yaml")))
    assert load_spec(str(path)).base_recipe()["name"] == "r"


def test_base_recipe_is_a_copy() -> None:
    spec = _load(_spec())
    spec.base_recipe()["train"]["epochs"] = -1
    assert spec.base_recipe()["train"]["epochs"] == 150


def test_fingerprint_follows_the_space_and_the_recipe_not_the_budget() -> None:
    base = _load(_spec()).fingerprint("mars-pgm")
    assert _load(_spec(budget={"n_trials": 9})).fingerprint("mars-pgm") == base
    space = {**MARS, "enqueue": [{"radius": 0.1}]}
    assert _load(_spec(methods={"mars-pgm": space})).fingerprint("mars-pgm") == base
    wider = {**MARS, "radius": {"low": 0.01, "high": 3.0}}
    assert _load(_spec(methods={"mars-pgm": wider})).fingerprint("mars-pgm") != base
    assert _load(_spec(set={"train.epochs": 3})).fingerprint("mars-pgm") != base
    with pytest.raises(ConfigError, match="no method 'pgm'"):
        _load(_spec()).fingerprint("pgm")


def test_parameters_and_defaults() -> None:
    spec = _load(
        _method(
            "pgm",
            norm=["mars", "frob"],
            radius={"low": "1e-2", "high": 1},
            **{"head_radius": [1.0, 3.0], "lr": {"low": 0.0001, "high": 0.01, "log": False}},
        )
    )
    space = spec.methods["pgm"]
    assert space.params["norm"] == Choice(("mars", "frob"))
    assert space.params["radius"] == FloatRange(0.01, 1.0, log=True)
    assert space.params["head_radius"] == Choice((1.0, 3.0))
    assert space.params["lr"] == FloatRange(1e-4, 1e-2, log=False)
    assert space.groups == "shared"
    assert (spec.sampler.name, spec.pruner.name, spec.evaluation.n_seeds) == ("tpe", "median", 5)


def test_to_dict_round_trips_through_spec_from_dict() -> None:
    spec = _load(
        _spec(
            methods={"mars-pgm": {**MARS, "groups": "geometric", "scale": {"low": 1, "high": 3}}}
        )
    )
    data = spec.to_dict()
    data.pop("base_recipe")
    assert _load(data) == spec


def test_the_learned_and_robust_methods_load_with_their_parameters() -> None:
    spec = _load(_spec(methods={**ROBUST, "mars-pgm": {**MARS, "wise": True}}))
    assert spec.methods["tpgm"].params["proj_freq"] == IntRange(1, 4)
    assert spec.methods["ftp"].params["radius_lr"] == Choice((1e-2, 1e-1))
    assert spec.methods["spd"].params["lam"] == FloatRange(0.0, 2.0, log=False)
    assert spec.methods["mars-pgm"].wise
    assert not spec.methods["lp-ft"].wise
    data = spec.to_dict()
    data.pop("base_recipe")
    assert _load(data) == spec


def test_a_warm_start_is_a_starting_point_not_part_of_the_space() -> None:
    plain = _load(_spec(methods={"ftp": {}, "mars-pgm": MARS}))
    warm = _load(_spec(methods={"ftp": {}, "mars-pgm": {**MARS, "warm_start": "ftp"}}))
    assert warm.methods["mars-pgm"].warm_start == "ftp"
    assert warm.fingerprint("mars-pgm") == plain.fingerprint("mars-pgm")
    data = warm.to_dict()
    assert data["methods"]["mars-pgm"]["warm_start"] == "ftp"
    data.pop("base_recipe")
    assert _load(data) == warm
    wise = _load(_spec(methods={"ftp": {}, "mars-pgm": {**MARS, "wise": True}}))
    assert wise.fingerprint("mars-pgm") != plain.fingerprint("mars-pgm")


def test_a_recipe_may_keep_spd_only_when_spd_is_the_only_method() -> None:
    alone = _spec(set={"train.optimizer": "spd"}, methods={"spd": ROBUST["spd"]})
    assert _load(alone).base_recipe()["train"]["optimizer"] == "spd"


def test_independent_enqueue_may_give_one_radius_for_every_group() -> None:
    space = {**MARS, "groups": "independent", "radius.block3": {"low": 1.0, "high": 5.0}}
    space["enqueue"] = [{"radius": 0.1, "radius.block3": 2.0, "head_radius": 3.0}]
    assert _load(_method("mars-pgm", **space)).methods["mars-pgm"].enqueue


# ------------------------------------------------------------------------ errors


BAD: list[tuple[str, dict[str, Any], list[str]]] = [
    ("unknown top key", _spec(bogus=1), ["bogus", "methods", "budget"]),
    ("unknown method", _method("mars-pgn"), ["methods.mars-pgn", "mars-pgm", "l2-sp"]),
    ("no methods", _spec(methods={}), ["methods"]),
    (
        "param not accepted",
        _method("l2-sp", **PENALTY, radius={"low": 1, "high": 2}),
        ["methods.l2-sp.radius", "alpha, beta, lr"],
    ),
    (
        "scale without geometric",
        _method("mars-pgm", **MARS, scale={"low": 1, "high": 2}),
        ["methods.mars-pgm.scale", "groups: shared", "scale (groups: geometric)"],
    ),
    (
        "group radius without independent",
        _method("mars-pgm", **MARS, **{"radius.block1": {"low": 1, "high": 2}}),
        ["methods.mars-pgm.radius.block1", "radius.<group> (groups: independent)"],
    ),
    (
        "missing radius",
        _method("mars-pgm", head_radius={"low": 1, "high": 2}),
        ["methods.mars-pgm.radius", "required"],
    ),
    (
        "missing head radius",
        _method("frob-pgm", radius={"low": 1, "high": 2}),
        ["methods.frob-pgm.head_radius", "required"],
    ),
    (
        "geometric needs scale",
        _method("mars-pgm", **MARS, groups="geometric"),
        ["methods.mars-pgm.scale", "required"],
    ),
    ("pgm needs norm", _method("pgm", **MARS), ["methods.pgm.norm", "required"]),
    (
        "penalty needs beta",
        _method("delta", alpha={"low": 1e-3, "high": 1}),
        ["methods.delta.beta", "required"],
    ),
    ("bad norm", _method("pgm", **MARS, norm=["mars", "l1"]), ["methods.pgm.norm", "mars, frob"]),
    ("norm as range", _method("pgm", **MARS, norm={"low": 1, "high": 2}), ["methods.pgm.norm"]),
    (
        "bad groups",
        _method("mars-pgm", **MARS, groups="perlayer"),
        ["methods.mars-pgm.groups", "'perlayer'", "independent", "geometric"],
    ),
    (
        "groups on a penalty",
        _method("l2-sp", **PENALTY, groups="shared"),
        ["methods.l2-sp.groups", "groups, relative, mode"],
    ),
    (
        "bad mode",
        _method("mars-pgm", **MARS, mode="project"),
        ["methods.mars-pgm.mode", "rescale"],
    ),
    (
        "low >= high",
        _method("mars-pgm", **{**MARS, "radius": {"low": 2.0, "high": 1.0}}),
        ["methods.mars-pgm.radius", "low must be < high", "2.0"],
    ),
    (
        "log from zero",
        _method("mars-pgm", **{**MARS, "radius": {"low": 0, "high": 1.0}}),
        ["methods.mars-pgm.radius", "log", "0"],
    ),
    (
        "range typo",
        _method("mars-pgm", **{**MARS, "radius": {"low": 0.1, "hi": 1.0}}),
        ["methods.mars-pgm.radius.hi", "high"],
    ),
    (
        "range missing high",
        _method("mars-pgm", **{**MARS, "radius": {"low": 0.1}}),
        ["methods.mars-pgm.radius", "high"],
    ),
    (
        "range not a number",
        _method("mars-pgm", **{**MARS, "radius": {"low": "a", "high": 1}}),
        ["methods.mars-pgm.radius.low", "'a'"],
    ),
    (
        "scalar, not a range",
        _method("mars-pgm", **{**MARS, "radius": 0.1}),
        ["methods.mars-pgm.radius", "0.1", "range"],
    ),
    (
        "empty choices",
        _method("mars-pgm", **{**MARS, "radius": []}),
        ["methods.mars-pgm.radius", "empty"],
    ),
    (
        "enqueue unknown param",
        _method("mars-pgm", **MARS, enqueue=[{"alpha": 0.1}]),
        ["methods.mars-pgm.enqueue[0].alpha", "radius, head_radius"],
    ),
    (
        "enqueue outside range",
        _method("mars-pgm", **MARS, enqueue=[{"radius": 5.0}]),
        ["methods.mars-pgm.enqueue[0].radius", "5.0", "[0.01, 2.0]"],
    ),
    (
        "enqueue second point",
        _method("l2-sp", **PENALTY, enqueue=[{"alpha": 0.1}, {"beta": "x"}]),
        ["methods.l2-sp.enqueue[1].beta", "'x'"],
    ),
    (
        "enqueue outside choices",
        _method("pgm", **MARS, norm=["mars"], enqueue=[{"norm": "frob"}]),
        ["methods.pgm.enqueue[0].norm", "'frob'", "'mars'"],
    ),
    (
        "enqueue group radius outside",
        _method("mars-pgm", **MARS, groups="independent", enqueue=[{"radius.block1": 9.0}]),
        ["methods.mars-pgm.enqueue[0].radius.block1", "9.0"],
    ),
    (
        "enqueue not a mapping",
        _method("mars-pgm", **MARS, enqueue=[0.1]),
        ["methods.mars-pgm.enqueue[0]", "mapping"],
    ),
    ("n_trials 0", _spec(budget={"n_trials": 0}), ["budget.n_trials", "0"]),
    ("n_trials text", _spec(budget={"n_trials": "many"}), ["budget.n_trials", "'many'"]),
    ("timeout 0", _spec(budget={"timeout": 0}), ["budget.timeout", "0"]),
    ("trial timeout < 0", _spec(budget={"trial_timeout": -5}), ["budget.trial_timeout", "-5"]),
    ("budget typo", _spec(budget={"trials": 3}), ["budget.trials", "n_trials"]),
    ("repeats 0", _spec(budget={"repeats": 0}), ["budget.repeats must be >= 1", "0"]),
    ("repeats text", _spec(budget={"repeats": "two"}), ["budget.repeats", "integer", "'two'"]),
    ("repeats fraction", _spec(budget={"repeats": 1.5}), ["budget.repeats", "integer", "1.5"]),
    ("repeats true", _spec(budget={"repeats": True}), ["budget.repeats", "integer", "True"]),
    ("n_seeds 0", _spec(evaluation={"n_seeds": 0}), ["evaluation.n_seeds", "0"]),
    ("bad sampler", _spec(sampler={"name": "bayes"}), ["sampler.name", "'bayes'", "tpe"]),
    ("bad pruner", _spec(pruner={"name": "asha"}), ["pruner.name", "'asha'", "median"]),
    ("missing recipe file", _spec(recipe="configs/nope.yaml"), ["recipe", "configs/nope.yaml"]),
    ("no recipe", {k: v for k, v in _spec().items() if k != "recipe"}, ["recipe", "None"]),
    ("bad set value", _spec(set={"train.epochs": 0}), ["train.epochs", "0"]),
    ("bad set key", _spec(set={"train.epochz": 3}), ["train.epochz"]),
    ("bad name", _spec(name="a/b"), ["name", "'a/b'"]),
    (
        "patch breaks the recipe",
        _method("standard", lr={"low": -1.0, "high": 1.0, "log": False}),
        ["methods.standard", "train.lr", "-1.0"],
    ),
    (
        "penalty weight below zero",
        _method("l2-sp", alpha=[-0.1, 0.1], beta=[0.1]),
        ["methods.l2-sp", "penalty.alpha", "-0.1"],
    ),
    (
        "spd strength below zero",
        _method("spd", lam={"low": -0.5, "high": 1.0, "log": False}),
        ["methods.spd", "train.spd_lam", "-0.5"],
    ),
    ("spd needs its strength", _method("spd"), ["methods.spd.lam", "required"]),
    (
        "projection every 0 steps",
        _method("tpgm", proj_freq={"low": 0, "high": 4}),
        ["methods.tpgm", "constraint.proj_freq", "0"],
    ),
    (
        "projection every 1.5 steps",
        _method("tpgm", proj_freq={"low": 1.5, "high": 4}),
        ["methods.tpgm.proj_freq.low", "integer", "1.5"],
    ),
    (
        "holdout reaching 1",
        _method("tpgm", holdout={"low": 0.1, "high": 1.0}),
        ["methods.tpgm", "constraint.holdout", "1.0"],
    ),
    (
        "ftp k above 1",
        _method("ftp", k={"low": 0.5, "high": 2.0}),
        ["methods.ftp", "constraint.k", "2.0"],
    ),
    (
        "ftp takes no radius",
        _method("ftp", radius={"low": 0.1, "high": 1.0}),
        ["methods.ftp.radius", "k, radius_lr, lr"],
    ),
    (
        "ftp takes no groups",
        _method("ftp", groups="independent"),
        ["methods.ftp.groups", "ftp searches no radii"],
    ),
    ("wise not a bool", _method("standard", wise="yes"), ["methods.standard.wise", "'yes'"]),
    (
        "recipe with spd for every method",
        _spec(set={"train.optimizer": "spd"}),
        ["train.optimizer is spd", "mars-pgm would run SPD too"],
    ),
    (
        "warm start from a method not in the spec",
        _method("mars-pgm", **MARS, warm_start="ftp"),
        ["methods.mars-pgm.warm_start", "ftp is not a method of this spec", "mars-pgm"],
    ),
    (
        "warm start from an unknown method",
        _method("mars-pgm", **MARS, warm_start="ftpp"),
        ["methods.mars-pgm.warm_start", "'ftpp'", "tpgm"],
    ),
    (
        "warm start from a method that learns no radii",
        _spec(methods={"l2-sp": PENALTY, "mars-pgm": {**MARS, "warm_start": "l2-sp"}}),
        ["methods.mars-pgm.warm_start", "l2-sp learns no radii", "ftp, tpgm"],
    ),
    (
        "warm start on a penalty",
        _spec(methods={"ftp": {}, "l2-sp": {**PENALTY, "warm_start": "ftp"}}),
        ["methods.l2-sp.warm_start", "l2-sp searches no radii"],
    ),
    (
        "warm start on a learner",
        _spec(methods={"ftp": {}, "tpgm": {"warm_start": "ftp"}}),
        ["methods.tpgm.warm_start", "tpgm searches no radii"],
    ),
    (
        "warm start of frobenius radii",
        _spec(methods={"ftp": {}, "frob-pgm": {**MARS, "warm_start": "ftp"}}),
        ["methods.frob-pgm.warm_start", "MARS radii", "frob"],
    ),
    (
        "warm start of pgm without mars",
        _spec(methods={"ftp": {}, "pgm": {**MARS, "norm": ["frob"], "warm_start": "ftp"}}),
        ["methods.pgm.warm_start", "MARS radii", "frob"],
    ),
    (
        "refit needs select last",
        _spec(set={"train.select": "best-val"}, evaluation={"refit": True}),
        ["evaluation.refit", "train.select"],
    ),
]


@pytest.mark.parametrize(("data", "needles"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_errors_name_the_key_and_value(data: dict[str, Any], needles: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        _load(data)
    for needle in needles:
        assert needle in str(info.value), str(info.value)


def test_missing_spec_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="study spec .*nope.yaml does not exist"):
        load_spec(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods: [\n")
    with pytest.raises(ConfigError, match="study spec .*bad.yaml is not valid YAML"):
        load_spec(str(bad))


def test_bad_override(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_spec()))
    with pytest.raises(ConfigError, match="budget.n_trials"):
        load_spec(str(path), ["budget.n_trials=0"])


def test_the_error_of_the_base_recipe_has_the_path() -> None:
    with pytest.raises(ConfigError, match="nope.yaml"):
        _load(_spec(recipe="nope.yaml"))
