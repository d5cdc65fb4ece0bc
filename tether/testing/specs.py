"""Tiny recipes and study specs on the built-in digits task: seconds per trial on a CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tether.jsondata import deep_merge


def tiny_digits_recipe(**train: Any) -> dict[str, Any]:
    """A digits recipe that trains in well under a second per epoch on a CPU; ``train``
    overrides its ``train:`` section.

    Example:
        >>> from tether.finetune.recipe import recipe_from_dict
        >>> recipe_from_dict(tiny_digits_recipe(epochs=1)).train.epochs
        1
    """
    return {
        "name": "tiny",
        "model": {"name": "digits-cnn", "weights": "digits-source"},
        "data": {"kind": "digits", "shots": 5, "val_shots": 3},
        "train": {"lr": 1e-3, "epochs": 2, "batch_size": 16, "lr_step": 0, **train},
        "constraint": {"norm": "mars", "radius": 0.5, "relative": True, "head_radius": 5.0},
    }


TWO_METHODS: dict[str, Any] = {
    "standard": {},
    "mars-pgm": {
        "relative": True,
        "radius": {"low": 0.05, "high": 1.0},
        "head_radius": {"low": 1.0, "high": 10.0},
        "enqueue": [{"radius": 0.1, "head_radius": 3.0}],
    },
}
"""Standard fine-tuning (nothing searched: one trial) and MARS-PGM with a known point."""


def tiny_digits_spec(
    name: str, *, recipe: str, methods: dict[str, Any] | None = None, **changes: Any
) -> dict[str, Any]:
    """A study spec on clean digits, 5 shots a class, one epoch: ``methods`` (default
    :data:`TWO_METHODS`), two trials, no pruning. ``recipe`` is the path of a digits recipe
    (``configs/digits.yaml``); ``changes`` are merged into the spec (``set`` into its ``set``).

    Example:
        >>> spec = tiny_digits_spec("t", recipe="digits.yaml", set={"train.epochs": 3})
        >>> spec["set"]["train.epochs"], spec["set"]["data.noise"], list(spec["methods"])
        (3, 'none', ['standard', 'mars-pgm'])
    """
    spec: dict[str, Any] = {
        "name": name,
        "recipe": recipe,
        "set": {
            "train.epochs": 1,
            "data.shots": 5,
            "data.val_shots": 3,
            "data.noise": "none",
            "data.noise_rate": 0.0,
        },
        "budget": {"n_trials": 2},
        "pruner": {"name": "none"},
        "methods": TWO_METHODS if methods is None else methods,
    }
    return deep_merge(spec, changes)


def write_spec(folder: Path, spec: dict[str, Any]) -> Path:
    """Write ``spec`` as ``<folder>/<name>.yaml``; its path."""
    path = folder / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
