"""The model section of a fine-tuning recipe (``model:`` in configs/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tether.errors import ConfigError
from tether.finetune.models.heads import check_head
from tether.finetune.models.heads import head_adapter
from tether.finetune.models.zoo import check_weights
from tether.finetune.models.zoo import model_class


@dataclass(frozen=True)
class ModelConfig:
    """Which network to fine-tune, from which weights, and with which new classifier.

    Attributes:
        name: a torchvision classification model (``resnet50``, ``efficientnet_b0``,
            ``convnext_tiny``, ``vit_b_16``, ...) or ``digits-cnn``; ``list_models()`` lists them.
        weights: ``DEFAULT``, a member of the model's torchvision weights enum
            (``IMAGENET1K_V2`` or ``ResNet50_Weights.IMAGENET1K_V2``), ``none`` (random
            initialisation), or ``digits-source`` (``digits-cnn`` only: the source network the
            runner pretrains and passes to ``build_model`` as a checkpoint). Ignored when
            ``checkpoint`` is set.
        checkpoint: a local file whose backbone weights are loaded with
            ``torch.load(weights_only=True)``; see :mod:`tether.finetune.models.checkpoint`.
        head: ``gap`` (a new linear classifier on globally pooled features) or ``flatten``
            (on the flattened final feature map, as in the MARS-PGM paper); see
            :mod:`tether.finetune.models.heads`.

    Validation checks names only: nothing is downloaded and the checkpoint is not opened.

    Example:
        >>> ModelConfig(name="resnet18", weights="IMAGENET1K_V1", head="flatten").head
        'flatten'
    """

    name: str = "resnet50"
    weights: str = "DEFAULT"
    checkpoint: str | None = None
    head: Literal["gap", "flatten"] = "gap"

    def __post_init__(self) -> None:
        """Validate every field; the message of each error starts with the dotted key."""
        cls = model_class(self.name)
        if self.checkpoint is None:
            check_weights(self.name, self.weights)
        elif not isinstance(self.checkpoint, str) or not self.checkpoint:
            raise ConfigError(
                f"model.checkpoint must be a file path, got {self.checkpoint!r}",
                kind="checkpoint",
            )
        check_head(head_adapter(cls, name=self.name), self.head, name=self.name)
