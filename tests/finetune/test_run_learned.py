"""The learned-radius methods and the robust baselines, one run each, end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tether.errors import ConfigError
from tether.finetune.recipe import recipe_from_dict
from tether.finetune.run import run
from tether.testing.specs import tiny_digits_recipe


FREE = {"norm": "none"}


def _run(
    constraint: dict[str, Any], cache_dir: Path, **train: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    recipe = tiny_digits_recipe(epochs=2, lr=1e-2, **train)
    recipe["constraint"] = constraint
    events: list[dict[str, Any]] = []
    result = run(recipe_from_dict(recipe), emit=events.append, cache_dir=cache_dir)
    return events[0], result


@pytest.mark.parametrize(
    "constraint",
    [
        {"norm": "mars", "learn": "ftp"},
        {"norm": "mars", "learn": "ftp", "tensors": "tether", "k": 0.5},
        {"norm": "mars", "learn": "tpgm", "holdout": 0.2, "holdout_batch": 4},
        {"norm": "mars", "learn": "tpgm", "tensors": "tether", "init": "loose"},
        {"norm": "frob", "learn": "tpgm", "init": "loose", "proj_freq": 2},
        {"norm": "frob", "learn": "tpgm-posthoc", "posthoc_iters": 5},
    ],
    ids=["ftp", "ftp-tether", "tpgm", "tpgm-tether", "tpgm-frob", "tpgm-posthoc"],
)
def test_learned_radii_are_reported_and_hold(constraint: dict[str, Any], cache_dir: Path) -> None:
    start, result = _run(constraint, cache_dir)
    learned = result["learned_radii"]
    assert set(learned["absolute"]) == {"block1", "block2", "block3"}, "the head stays free"
    assert all(r > 0 for r in learned["absolute"].values())
    assert all(r > 0 for r in learned["relative"].values())
    assert start["constraint"].startswith(constraint["learn"].upper())
    if constraint.get("tensors") == "tether":  # measured as Tether measures every method
        for group, radius in learned["absolute"].items():
            assert result["distances"][group] <= radius * (1 + 1e-4) + 1e-6
    if constraint["learn"] != "ftp":
        assert start["sizes"]["heldout"] >= 1
        assert start["sizes"]["train"] + start["sizes"]["heldout"] == 25


def test_spd_trains_and_lam_zero_matches_adam(cache_dir: Path) -> None:
    _, adam = _run(FREE, cache_dir)
    _, spd0 = _run(FREE, cache_dir, optimizer="spd", spd_lam=0.0)
    assert spd0["distances"] == adam["distances"]
    assert spd0["test_accuracy"] == adam["test_accuracy"]
    _, spd1 = _run(FREE, cache_dir, optimizer="spd", spd_lam=1.0)
    assert spd1["distances_frob"]["block3"] < adam["distances_frob"]["block3"]


def test_lp_ft_and_wise_ft_report_their_choices(cache_dir: Path) -> None:
    _, result = _run(FREE, cache_dir, linear_probe=True, bn_eval=True, wise="val")
    assert result["probe"]["c"] > 0
    assert 0 <= result["probe"]["val_accuracy"] <= 1
    assert result["wise"]["alpha"] in [i / 10 for i in range(11)]
    assert result["val_accuracy"] == pytest.approx(max(result["wise"]["val_by_alpha"].values()))


def test_a_fixed_wise_coefficient_zero_keeps_the_pretrained_layers(cache_dir: Path) -> None:
    _, result = _run(FREE, cache_dir, wise=0.0)
    assert result["wise"] == {"alpha": 0.0}
    assert result["distances"]["block1"] == 0
    assert result["distances"]["head"] > 0


def test_refit_needs_the_values_chosen_on_val() -> None:
    with pytest.raises(ConfigError, match="probe_c"):
        recipe_from_dict(tiny_digits_recipe(refit=True, linear_probe=True))
    with pytest.raises(ConfigError, match="wise"):
        recipe_from_dict(tiny_digits_recipe(refit=True, wise="val"))


@pytest.mark.parametrize(
    ("constraint", "match"),
    [
        ({"norm": "mars", "learn": "tpgm", "proj_freq": 0}, "proj_freq"),
        ({"norm": "mars", "learn": "tpgm", "holdout": 1.0}, "holdout"),
        ({"norm": "frob", "learn": "ftp"}, "mars"),
        ({"norm": "mars", "learn": "ftp", "radius": 0.1}, "learned"),
        ({"norm": "none", "learn": "ftp"}, "norm"),
    ],
)
def test_bad_learner_settings_are_refused(constraint: dict[str, Any], match: str) -> None:
    recipe = tiny_digits_recipe()
    recipe["constraint"] = constraint
    with pytest.raises(ConfigError, match=match):
        recipe_from_dict(recipe)
