"""The model section of a fine-tuning recipe (``model:`` in configs/*.yaml). Imports no torch.

A config checks its own form (strings where strings belong, a known head); whether the name is
a model torchvision, timm, Hugging Face (or Tether) has, with those weights and that head, is
:func:`tether.finetune.models.zoo.check_model`'s question, which imports torchvision. Building
the model asks it too, and so do ``load_recipe`` and the verbs that run trials, before they
write anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tether.errors import ConfigError


HEADS = ("flatten", "gap")


@dataclass(frozen=True)
class ModelConfig:
    """Which network to fine-tune, from which weights, and with which new classifier.

    Attributes:
        name: a torchvision classification model (``resnet50``, ``efficientnet_b0``,
            ``convnext_tiny``, ``vit_b_16``, ...; ``list_models()`` lists them),
            ``digits-cnn``, ``timm/<timm name>`` (``timm/convnext_atto``), or
            ``hf/<Hub name or folder>`` (``hf/google/vit-base-patch16-224``) or a folder
            holding a Hugging Face ``config.json``.
        weights: ``DEFAULT``, a member of the model's torchvision weights enum
            (``IMAGENET1K_V2`` or ``ResNet50_Weights.IMAGENET1K_V2``), ``none`` (random
            initialisation), ``pretrained`` (timm and Hugging Face models, for which
            ``DEFAULT`` means the same), or ``digits-source`` (``digits-cnn`` only: the source
            network the runner pretrains and passes to ``build_model`` as a checkpoint).
            Ignored when ``checkpoint`` is set.
        checkpoint: a local file whose backbone weights are loaded: ``.safetensors``, or a
            torch file read with ``torch.load(weights_only=True)``; see
            :mod:`tether.finetune.models.checkpoint`.
        head: ``gap`` (a new linear classifier on globally pooled features) or ``flatten``
            (on the flattened final feature map, as in the MARS-PGM paper; torchvision models
            only); see :mod:`tether.finetune.models.heads`.

    Nothing is downloaded and the checkpoint is not opened.

    Example:
        >>> ModelConfig(name="resnet18", weights="IMAGENET1K_V1", head="flatten").head
        'flatten'
    """

    name: str = "resnet50"
    weights: str = "DEFAULT"
    checkpoint: str | None = None
    head: Literal["gap", "flatten"] = "gap"

    def __post_init__(self) -> None:
        """Validate the form of every field; each message starts with the dotted key."""
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"model.name must be a model name, got {self.name!r}", kind="model")
        if not isinstance(self.weights, str) or not self.weights:
            raise ConfigError(
                f"model.weights must be a weights name or none, got {self.weights!r}",
                kind="model",
            )
        if self.checkpoint is not None and (
            not isinstance(self.checkpoint, str) or not self.checkpoint
        ):
            raise ConfigError(
                f"model.checkpoint must be a file path, got {self.checkpoint!r}",
                kind="checkpoint",
            )
        if self.head not in HEADS:
            raise ConfigError(
                f"model.head {self.head!r} is not a head; choose from {', '.join(HEADS)}"
            )
