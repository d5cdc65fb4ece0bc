"""Models to fine-tune: torchvision's by name and weights, a local checkpoint, a new head.

Example:
    >>> from tether.finetune.models import ModelConfig, build_model
    >>> built = build_model(
    ...     ModelConfig(name="resnet18", weights="none", head="flatten"),
    ...     num_classes=7,
    ...     image_size=64,
    ... )
    >>> built.head, built.model.get_submodule(built.head).in_features
    ('fc', 2048)
"""

from __future__ import annotations

from tether.finetune.models.build import BuiltModel
from tether.finetune.models.build import build_model
from tether.finetune.models.checkpoint import load_backbone
from tether.finetune.models.checkpoint import read_state_dict
from tether.finetune.models.config import ModelConfig
from tether.finetune.models.heads import HEADS
from tether.finetune.models.heads import HeadAdapter
from tether.finetune.models.heads import list_head_families
from tether.finetune.models.heads import register_head_adapter
from tether.finetune.models.heads import replace_head
from tether.finetune.models.zoo import LocalModel
from tether.finetune.models.zoo import list_models
from tether.finetune.models.zoo import register_local_model
from tether.finetune.models.zoo import weights_choices


__all__ = [
    "HEADS",
    "BuiltModel",
    "HeadAdapter",
    "LocalModel",
    "ModelConfig",
    "build_model",
    "list_head_families",
    "list_models",
    "load_backbone",
    "read_state_dict",
    "register_head_adapter",
    "register_local_model",
    "replace_head",
    "weights_choices",
]
