"""A recipe: everything one fine-tuning run needs, as one frozen, validated object.

``configs/*.yaml`` hold recipes; ``--set train.epochs=2`` overrides any key by its dotted
path as written in the YAML; the resolved recipe (``to_dict``) is what a worker receives and
what every trial stores.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from tether.errors import ConfigError
from tether.finetune.config import apply_overrides
from tether.finetune.config import from_dict
from tether.finetune.config import read_yaml
from tether.finetune.config import to_dict
from tether.finetune.data import DataConfig
from tether.finetune.models import ModelConfig
from tether.finetune.regularizers import ConstraintConfig
from tether.finetune.regularizers import PenaltyConfig
from tether.finetune.training.config import TrainConfig


@dataclass(frozen=True)
class Recipe:
    """One fine-tuning run: model, data, training, and the two regularisers."""

    name: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    constraint: ConstraintConfig = field(default_factory=ConstraintConfig)
    penalty: PenaltyConfig = field(default_factory=PenaltyConfig)

    def __post_init__(self) -> None:
        needs_source = self.model.weights == "digits-source" and self.model.checkpoint is None
        if needs_source and self.data.kind != "digits":
            raise ConfigError(
                "model.weights 'digits-source' needs data.kind 'digits' (the source task)"
            )
        if self.constraint.learn == "ftp" and self.train.optimizer == "spd":
            raise ConfigError(
                "constraint.learn 'ftp' is an optimiser around adam or sgd; "
                "train.optimizer cannot also be spd"
            )

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe as plain JSON/YAML data."""
        return to_dict(self)


def recipe_from_dict(data: Mapping[str, Any], overrides: Sequence[str] = ()) -> Recipe:
    """Validate a recipe mapping (after applying ``key=value`` overrides)."""
    return from_dict(Recipe, apply_overrides(data, overrides))


def load_recipe(path: str, overrides: Sequence[str] = ()) -> Recipe:
    """Read ``configs/x.yaml`` with ``yaml.safe_load`` and validate it."""
    data = read_yaml(path)
    data.setdefault("name", path.rsplit("/", 1)[-1].removesuffix(".yaml").removesuffix(".yml"))
    return recipe_from_dict(data, overrides)
