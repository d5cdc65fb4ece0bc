"""Tether: search the radii that keep a fine-tuned network close to its pretrained weights.

The public API, for a training loop or a notebook. ``import tether`` imports no torch: each
name is imported the first time it is used.

Example:
    >>> import tether
    >>> recipe = tether.load_recipe("configs/digits.yaml", ["train.epochs=1"])
    >>> recipe.constraint.norm, recipe.model.name
    ('mars', 'digits-cnn')
    >>> tether.geometric_radii(["layer1", "layer2"], base=0.1, scale=2.0)
    {'layer1': 0.1, 'layer2': 0.2}
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tether._lazy import lazy_exports
from tether.errors import ConfigError
from tether.version import __version__


if TYPE_CHECKING:
    from tether.finetune.layers import geometric_radii as geometric_radii
    from tether.finetune.layers import layer_groups as layer_groups
    from tether.finetune.recipe import Recipe as Recipe
    from tether.finetune.recipe import load_recipe as load_recipe
    from tether.finetune.regularizers import DistanceConstraint as DistanceConstraint
    from tether.finetune.regularizers import DistancePenalty as DistancePenalty
    from tether.finetune.run import run as run
    from tether.search.spec import StudySpec as StudySpec
    from tether.search.spec import load_spec as load_spec
    from tether.search.spec import load_specs as load_specs

_EXPORTS = {
    "DistanceConstraint": "tether.finetune.regularizers",
    "DistancePenalty": "tether.finetune.regularizers",
    "Recipe": "tether.finetune.recipe",
    "StudySpec": "tether.search.spec",
    "geometric_radii": "tether.finetune.layers",
    "layer_groups": "tether.finetune.layers",
    "load_recipe": "tether.finetune.recipe",
    "load_spec": "tether.search.spec",
    "load_specs": "tether.search.spec",
    "run": "tether.finetune.run",
}
__all__ = ["ConfigError", "__version__", *sorted(_EXPORTS)]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
