"""Recipes: dict/YAML -> frozen dataclasses, errors with the dotted key, overrides, round trip."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from tether.errors import ConfigError
from tether.finetune.config import apply_overrides
from tether.finetune.config import from_dict
from tether.finetune.config import parse_override
from tether.finetune.config import to_dict
from tether.finetune.recipe import Recipe
from tether.finetune.recipe import load_recipe
from tether.finetune.recipe import recipe_from_dict
from tether.finetune.regularizers import ConstraintConfig
from tether.finetune.regularizers import PenaltyConfig
from tether.finetune.training.config import TrainConfig


def _error(data: dict[str, Any], overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(ConfigError) as info:
        recipe_from_dict(data, overrides)
    return str(info.value)


# ------------------------------------------------------------------------- from_dict


@pytest.mark.parametrize(
    ("data", "needles"),
    [
        ({"train": {"epochz": 3}}, ["train.epochz", "epochs"]),
        ({"bogus": 1}, ["bogus", "constraint", "train"]),
        ({"constraint": {"radius_": 1.0}}, ["constraint.radius_"]),
        ({"train": {"epochs": "ten"}}, ["train.epochs", "'ten'", "integer"]),
        ({"train": {"epochs": 2.5}}, ["train.epochs", "2.5"]),
        ({"train": {"epochs": True}}, ["train.epochs", "True"]),
        ({"train": {"lr": "fast"}}, ["train.lr", "'fast'", "number"]),
        ({"train": {"lr": False}}, ["train.lr", "False"]),
        ({"train": {"amp": "yes"}}, ["train.amp", "'yes'"]),
        ({"model": {"checkpoint": 3}}, ["model.checkpoint", "3"]),
        ({"data": {"resize": "big"}}, ["data.resize", "'big'"]),
        ({"data": {"source_classes": ["a"]}}, ["data.source_classes[0]", "'a'"]),
        ({"penalty": {"alpha": None}}, ["penalty.alpha", "None"]),
        ({"train": {"optimizer": "adamw"}}, ["train.optimizer", "'adamw'", "'adam'", "'sgd'"]),
        ({"constraint": {"norm": "l2"}}, ["constraint.norm", "'l2'", "'mars'", "'frob'"]),
        ({"constraint": {"mode": "soft"}}, ["constraint.mode", "'soft'", "'exact'"]),
        ({"penalty": {"include": "bias"}}, ["penalty.include", "'bias'"]),
        ({"constraint": {"norm": "mars", "radius": "big"}}, ["constraint.radius", "'big'"]),
        ({"train": 5}, ["train", "5", "mapping"]),
    ],
)
def test_errors_name_the_dotted_key_and_the_value(
    data: dict[str, Any], needles: list[str]
) -> None:
    message = _error(data)
    for needle in needles:
        assert needle in message, (needle, message)


def test_numbers_written_as_strings_are_accepted_for_floats() -> None:
    recipe = recipe_from_dict(
        {
            "train": {"lr": "1e-3", "weight_decay": "5E-4", "momentum": 0},
            "constraint": {
                "norm": "mars",
                "radius": {"layer1": "1e-1", "layer2": "inf"},
                "head_radius": "inf",
                "scale": None,
            },
            "penalty": {"name": "l2-sp", "alpha": "2.5e-2"},
        }
    )
    assert recipe.train.lr == 1e-3
    assert recipe.train.weight_decay == 5e-4
    assert isinstance(recipe.train.momentum, float)
    assert recipe.constraint.radius == {"layer1": 0.1, "layer2": math.inf}
    assert recipe.constraint.head_radius == math.inf
    assert recipe.penalty.alpha == 0.025
    single = recipe_from_dict({"constraint": {"norm": "frob", "radius": "inf", "head_radius": 2}})
    assert single.constraint.radius == math.inf
    assert single.constraint.head_radius == 2.0
    with pytest.raises(ConfigError, match="train.epochs"):
        recipe_from_dict({"train": {"epochs": "inf"}})  # strings are numbers for floats only


def test_from_dict_on_one_section() -> None:
    cfg = from_dict(TrainConfig, {"epochs": 2, "lr": "3e-4"}, prefix="train.")
    assert cfg == TrainConfig(epochs=2, lr=3e-4)
    assert from_dict(PenaltyConfig, None, prefix="penalty.") == PenaltyConfig()
    with pytest.raises(ConfigError, match="unknown key penalty.alfa"):
        from_dict(PenaltyConfig, {"alfa": 1.0}, prefix="penalty.")
    with pytest.raises(ConfigError, match="penalty.layers"):
        from_dict(PenaltyConfig, {"layers": [1]}, prefix="penalty.")
    layers = from_dict(PenaltyConfig, {"name": "delta", "layers": "layer4"}, prefix="penalty.")
    assert layers.layers == ("layer4",)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"train": {"refit": True, "select": "best-val"}}, "train.select"),
        ({"train": {"epochs": 0}}, "train.epochs"),
        ({"constraint": {"norm": "mars", "radius": 0}}, "0"),
        ({"constraint": {"norm": "none", "radius": 1.0}}, "constraint.norm"),
        ({"constraint": {"norm": "mars", "radius": {"a": 1.0}, "scale": 2.0}}, "scale"),
        ({"penalty": {"name": "l3-sp"}}, "'l3-sp'"),
        ({"penalty": {"name": "l2-sp", "beta": -1}}, "penalty.beta"),
    ],
)
def test_section_validation_reaches_the_user(data: dict[str, Any], needle: str) -> None:
    assert needle in _error(data)


def test_refit_with_best_val_is_refused_also_through_overrides() -> None:
    message = _error({"train": {"refit": True}}, ("train.select=best-val",))
    assert "train.refit" in message
    assert "'last'" in message
    assert recipe_from_dict({"train": {"refit": True, "select": "last"}}).train.refit


# ------------------------------------------------------------------------- overrides


def test_apply_overrides_sets_dotted_keys_and_creates_sections() -> None:
    data: dict[str, Any] = {"train": {"epochs": 3, "lr": 0.1}, "name": "x"}
    out = apply_overrides(
        data,
        [
            "train.epochs=2",
            "constraint.radius.layer1=0.5",
            "constraint.norm=mars",
            "penalty.layers=[layer3, layer4]",
            "name=a=b",
        ],
    )
    assert out == {
        "train": {"epochs": 2, "lr": 0.1},
        "name": "a=b",
        "constraint": {"radius": {"layer1": 0.5}, "norm": "mars"},
        "penalty": {"layers": ["layer3", "layer4"]},
    }
    assert data == {"train": {"epochs": 3, "lr": 0.1}, "name": "x"}  # not mutated


def test_overrides_go_through_validation() -> None:
    recipe = recipe_from_dict(
        {"train": {"epochs": 3}},
        ["train.lr=1e-3", "constraint.norm=frob", "constraint.radius=inf", "train.epochs=1"],
    )
    assert recipe.train.lr == 1e-3
    assert recipe.train.epochs == 1
    assert recipe.constraint.norm == "frob"
    assert "train.epochs" in _error({}, ("train.epochs=",))


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("train.epochs", "train.epochs"),
        ("=3", "=3"),
        ("train.epochs.x=1", "train.epochs"),
        ("train.epochs=[1", "[1"),
    ],
)
def test_bad_overrides(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides({"train": {"epochs": 2}}, [text])
    assert needle in str(info.value)


def test_parse_override_reads_the_value_as_yaml() -> None:
    assert parse_override("train.epochs=2") == (["train", "epochs"], 2)
    assert parse_override("train.amp=false") == (["train", "amp"], False)
    assert parse_override(" constraint.radius = .inf ") == (["constraint", "radius"], math.inf)
    assert parse_override("model.checkpoint=null") == (["model", "checkpoint"], None)


# ------------------------------------------------------------------------- round trip


def _rich_recipe() -> Recipe:
    return recipe_from_dict(
        {
            "name": "rich",
            "model": {"name": "resnet18", "weights": "none", "head": "flatten"},
            "data": {"kind": "digits", "shots": 3, "noise": "pair", "noise_rate": 0.2},
            "train": {"epochs": 2, "lr": 3e-4, "select": "best-val", "optimizer": "sgd"},
            "constraint": {
                "norm": "mars",
                "radius": {"stem": "inf", "layer1": 0.5, "layer2": 1.0},
                "head_radius": 4.0,
                "relative": True,
                "mode": "exact",
            },
            "penalty": {"name": "delta", "alpha": 0.1, "layers": ["layer3", "layer4"]},
        }
    )


@pytest.mark.parametrize("recipe", [Recipe(), _rich_recipe()], ids=["default", "rich"])
def test_to_dict_round_trips(recipe: Recipe, tmp_path: Path) -> None:
    plain = recipe.to_dict()
    assert plain == to_dict(recipe)
    assert recipe_from_dict(plain) == recipe
    path = tmp_path / "resolved.yaml"
    path.write_text(yaml.safe_dump(plain), encoding="utf-8")
    assert load_recipe(str(path)) == recipe
    assert "inf" in yaml.safe_dump(plain)  # inf is written as a string, never .inf or a float


def test_to_dict_is_plain_data() -> None:
    plain = _rich_recipe().to_dict()
    assert plain["constraint"]["radius"] == {"stem": "inf", "layer1": 0.5, "layer2": 1.0}
    assert plain["penalty"]["layers"] == ["layer3", "layer4"]
    assert plain["data"]["source_classes"] == [0, 1, 2, 3, 4]
    assert plain["constraint"]["scale"] is None
    cfg = ConstraintConfig(norm="frob", radius=1.0)
    assert to_dict(cfg)["head_radius"] == "inf"


# ---------------------------------------------------------------------------- load_recipe


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("train:\n  epochs: [1, 2\n", "line 3"),
        ("train:\n  epochs: 2\n lr: 3\n", "line 3"),
        ("name: a: b\n", "line 1"),
        ("train:\n\tepochs: 2\n", "line 2"),
    ],
)
def test_malformed_yaml_gives_the_line(text: str, line: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_recipe(str(path))
    message = str(info.value)
    assert line in message
    assert str(path) in message
    assert "\n" not in message


def test_missing_file_and_non_mapping(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_recipe(str(missing))
    assert str(missing) in str(info.value)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="mapping"):
        load_recipe(str(listing))


def test_load_recipe_reads_yaml_numbers_names_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "pets-mars.yaml"
    path.write_text(
        "train:\n  lr: 1e-3\n  epochs: 4\n"
        "constraint:\n  norm: mars\n  radius: 2\n  head_radius: inf\n  scale: 1.5\n",
        encoding="utf-8",
    )
    recipe = load_recipe(str(path), ["train.epochs=1"])
    assert recipe.name == "pets-mars"
    assert recipe.train.lr == 1e-3
    assert recipe.train.epochs == 1
    assert recipe.constraint.radius == 2.0
    assert recipe.constraint.head_radius == math.inf
    assert recipe.constraint.scale == 1.5
    empty = tmp_path / "empty.yml"
    empty.write_text("", encoding="utf-8")
    assert load_recipe(str(empty)) == Recipe(name="empty")


def test_load_recipe_reports_unknown_keys_by_dotted_path(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("penalty:\n  name: l2-sp\n  alpah: 0.1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"penalty\.alpah"):
        load_recipe(str(path))


def test_digits_source_weights_need_the_digits_task() -> None:
    message = _error(
        {
            "model": {"name": "digits-cnn", "weights": "digits-source"},
            "data": {"kind": "folder", "root": "/nonexistent"},
        }
    )
    assert "digits-source" in message
