"""Models to fine-tune: torchvision's by name and weights, a local checkpoint, a new head.

The names below are imported on first use: :class:`ModelConfig` alone needs no torch.

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

from typing import TYPE_CHECKING

from tether._lazy import lazy_exports


if TYPE_CHECKING:
    from tether.finetune.models.build import BuiltModel as BuiltModel
    from tether.finetune.models.build import build_model as build_model
    from tether.finetune.models.build import build_skeleton as build_skeleton
    from tether.finetune.models.checkpoint import load_backbone as load_backbone
    from tether.finetune.models.checkpoint import read_state_dict as read_state_dict
    from tether.finetune.models.config import HEADS as HEADS
    from tether.finetune.models.config import ModelConfig as ModelConfig
    from tether.finetune.models.heads import HeadAdapter as HeadAdapter
    from tether.finetune.models.heads import list_head_families as list_head_families
    from tether.finetune.models.heads import register_head_adapter as register_head_adapter
    from tether.finetune.models.heads import replace_head as replace_head
    from tether.finetune.models.zoo import LocalModel as LocalModel
    from tether.finetune.models.zoo import check_model as check_model
    from tether.finetune.models.zoo import list_models as list_models
    from tether.finetune.models.zoo import register_local_model as register_local_model
    from tether.finetune.models.zoo import weights_choices as weights_choices

_EXPORTS = {
    "HEADS": "tether.finetune.models.config",
    "BuiltModel": "tether.finetune.models.build",
    "HeadAdapter": "tether.finetune.models.heads",
    "LocalModel": "tether.finetune.models.zoo",
    "ModelConfig": "tether.finetune.models.config",
    "build_model": "tether.finetune.models.build",
    "build_skeleton": "tether.finetune.models.build",
    "check_model": "tether.finetune.models.zoo",
    "list_head_families": "tether.finetune.models.heads",
    "list_models": "tether.finetune.models.zoo",
    "load_backbone": "tether.finetune.models.checkpoint",
    "read_state_dict": "tether.finetune.models.checkpoint",
    "register_head_adapter": "tether.finetune.models.heads",
    "register_local_model": "tether.finetune.models.zoo",
    "replace_head": "tether.finetune.models.heads",
    "weights_choices": "tether.finetune.models.zoo",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
