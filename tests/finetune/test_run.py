"""One run in-process: every method end to end, determinism, the protocol switches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tether.finetune.recipe import recipe_from_dict
from tether.finetune.regularizers import list_penalties
from tether.finetune.run import run
from tether.finetune.training.loop import Stopped
from tether.testing.specs import tiny_digits_recipe


def _run(data: dict[str, Any], cache_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    events: list[dict[str, Any]] = []
    result = run(recipe_from_dict(data), emit=events.append, cache_dir=cache_dir)
    return events, result


def test_same_seed_same_metrics(cache_dir: Path) -> None:
    recipe = tiny_digits_recipe(epochs=3)
    first_events, first = _run(recipe, cache_dir)
    second_events, second = _run(recipe, cache_dir)
    for key in ("val_accuracy", "test_accuracy", "distances", "distances_frob"):
        assert first[key] == second[key]
    losses = [e["train_loss"] for e in first_events if e["event"] == "epoch"]
    assert losses == [e["train_loss"] for e in second_events if e["event"] == "epoch"]


def test_another_seed_gives_another_run(cache_dir: Path) -> None:
    _, first = _run(tiny_digits_recipe(epochs=2, seed=0), cache_dir)
    _, second = _run(tiny_digits_recipe(epochs=2, seed=1), cache_dir)
    assert first["distances"] != second["distances"]


@pytest.mark.parametrize("penalty", list_penalties())
def test_every_penalty_trains(penalty: str, cache_dir: Path) -> None:
    recipe = tiny_digits_recipe(epochs=2)
    recipe["constraint"] = {"norm": "none"}
    recipe["penalty"] = {"name": penalty, "alpha": 0.01, "beta": 0.01, "probe_epochs": 1}
    _, result = _run(recipe, cache_dir)
    assert 0 <= result["test_accuracy"] <= 1
    assert result["distances"]["block1"] > 0


@pytest.mark.parametrize(
    "constraint",
    [
        {"norm": "mars", "radius": 0.05, "head_radius": 1.0},
        {"norm": "frob", "radius": 0.2, "relative": True, "head_radius": 2.0},
        {"norm": "mars", "radius": 0.1, "scale": 2.0, "relative": True, "head_radius": 2.0},
        {"norm": "mars", "radius": 0.05, "mode": "exact", "head_radius": 1.0},
        {
            "norm": "mars",
            "radius": {"block1": 0.01, "block2": 0.02, "block3": "inf"},
            "head_radius": 1.0,
        },
    ],
)
def test_constrained_runs_end_inside_their_balls(
    constraint: dict[str, Any], cache_dir: Path
) -> None:
    recipe = tiny_digits_recipe(epochs=2, lr=1e-2)
    recipe["constraint"] = constraint
    _, result = _run(recipe, cache_dir)
    distances = result["distances"] if constraint["norm"] == "mars" else result["distances_frob"]
    # W = W0 + T is stored in float32: re-measuring a tiny T against |W0| ~ 0.3 loses ~1e-4.
    slack = 1 + 1e-3
    assert distances["head"] <= constraint["head_radius"] * slack
    if not constraint.get("relative") and not isinstance(constraint["radius"], dict):
        assert distances["block2"] <= constraint["radius"] * slack
    if isinstance(constraint["radius"], dict):
        assert distances["block1"] <= 0.01 * slack
        assert distances["block2"] <= 0.02 * slack


def test_refit_trains_on_train_and_val_and_reports_test(cache_dir: Path) -> None:
    events, result = _run(tiny_digits_recipe(epochs=2, refit=True), cache_dir)
    start = events[0]
    assert start["sizes"]["train"] == 5 * 5 + 3 * 5
    assert result["val_accuracy"] is None
    assert result["test_accuracy"] is not None
    assert all(e["val_accuracy"] is None for e in events if e["event"] == "epoch")


def test_best_val_selects_the_best_epoch(cache_dir: Path) -> None:
    events, result = _run(tiny_digits_recipe(epochs=4, select="best-val"), cache_dir)
    curve = [e["val_accuracy"] for e in events if e["event"] == "epoch"]
    assert curve[result["selected_epoch"] - 1] == max(curve)
    assert result["val_accuracy"] == pytest.approx(max(curve))


def test_a_stop_request_raises_between_batches(cache_dir: Path) -> None:
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Stopped):
        run(
            recipe_from_dict(tiny_digits_recipe(epochs=50)),
            emit=lambda event: None,
            cache_dir=cache_dir,
            should_stop=stop,
        )
    assert len(calls) == 4


def test_label_noise_is_reported(cache_dir: Path) -> None:
    recipe = tiny_digits_recipe(epochs=1)
    recipe["data"].update(noise="symmetric", noise_rate=0.4)
    _, result = _run(recipe, cache_dir)
    assert result["noisy_fraction"] == pytest.approx(0.4)
