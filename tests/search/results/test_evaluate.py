"""A refit reuses what the best trial chose on the validation split it now trains on."""

from __future__ import annotations

from typing import Any

import pytest

from tether.finetune.recipe import recipe_from_dict
from tether.search.results.evaluate import refit_recipe
from tether.testing.specs import tiny_digits_recipe


CHOSE = {"probe": {"c": 0.25, "val_accuracy": 0.8}, "wise": {"alpha": 0.3, "val_by_alpha": {}}}
"""The user attributes of an LP-FT trial with WiSE-FT: the probe's C and the coefficient."""


def _recipe(**train: Any) -> dict[str, Any]:
    recipe = tiny_digits_recipe(**train)
    recipe["constraint"] = {"norm": "none", "radius": float("inf"), "head_radius": float("inf")}
    return recipe


def test_a_refit_fixes_the_probe_c_and_the_wise_coefficient_chosen_on_val() -> None:
    searched = _recipe(linear_probe=True, wise="val")
    fixed = refit_recipe(searched, CHOSE)
    assert (fixed["train"]["probe_c"], fixed["train"]["wise"]) == (0.25, 0.3)
    assert searched["train"]["wise"] == "val"  # a copy
    fixed["train"].update(refit=True)
    train = recipe_from_dict(fixed).train  # what the recipe refuses with "val" or no C
    assert (train.probe_c, train.wise) == (0.25, 0.3)


def test_values_the_recipe_fixed_itself_are_kept() -> None:
    recipe = _recipe(linear_probe=True, probe_c=4.0, wise=0.5)
    assert refit_recipe(recipe, CHOSE) == recipe
    plain = _recipe()
    assert refit_recipe(plain, {}) == plain


@pytest.mark.parametrize(
    ("train", "missing"),
    [({"linear_probe": True}, "probe.c"), ({"wise": "val"}, "wise.alpha")],
)
def test_a_trial_that_kept_no_choice_cannot_be_refit(train: dict[str, Any], missing: str) -> None:
    with pytest.raises(ValueError, match=missing):
        refit_recipe(_recipe(**train), {"probe": {}, "wise": None})
