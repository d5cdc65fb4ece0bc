"""Build the network to fine-tune: architecture, starting weights, new classifier."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from tether.errors import ConfigError
from tether.finetune.models.checkpoint import load_backbone
from tether.finetune.models.checkpoint import read_state_dict
from tether.finetune.models.config import ModelConfig
from tether.finetune.models.heads import check_head
from tether.finetune.models.heads import check_logits
from tether.finetune.models.heads import head_adapter
from tether.finetune.models.heads import replace_head
from tether.finetune.models.zoo import NO_WEIGHTS
from tether.finetune.models.zoo import ModelSource
from tether.finetune.models.zoo import check_model
from tether.finetune.models.zoo import create_model
from tether.finetune.models.zoo import model_class
from tether.finetune.models.zoo import model_source


if TYPE_CHECKING:
    from tether.finetune.layers import LayerGroups
    from tether.finetune.recipe import Recipe


@dataclass(frozen=True)
class BuiltModel:
    """A network ready for fine-tuning.

    Attributes:
        model: the network, in train mode, on the CPU.
        head: dotted name of the new classifier ``nn.Linear`` (``fc``, ``classifier.1``,
            ``heads.head``, ``head.fc``); what ``DistanceConstraint(head=...)`` and the layer
            groups take.
        name: the model name.
        weights: what was loaded: a weights enum member (``IMAGENET1K_V2``), timm's
            pretrained name (``resnet18.a1_in1k``), ``pretrained`` (Hugging Face), ``none``,
            or ``checkpoint:<file name>``.
    """

    model: nn.Module
    head: str
    name: str
    weights: str


def build_model(
    cfg: ModelConfig, *, num_classes: int, image_size: int, checkpoint: Path | None = None
) -> BuiltModel:
    """Build ``cfg.name`` with its starting weights and a new ``num_classes``-way classifier.

    The starting weights are, first found: the ``checkpoint`` argument (the runner passes the
    digits source network here), ``cfg.checkpoint``, or ``cfg.weights`` through torchvision's
    weights API (downloaded on first use, then cached by torch.hub), or timm's or Hugging
    Face's (a :class:`~tether.finetune.models.zoo.ModelSource`). A checkpoint
    (``.safetensors`` or a torch file) is loaded into the model with its original classifier,
    minus that classifier's tensors; then the head is replaced
    (:func:`tether.finetune.models.heads.replace_head`, or the source's ``new_head``).

    Args:
        cfg: the model section of the recipe.
        num_classes: classes of the target task.
        image_size: the working resolution; the model is run once at this size.
        checkpoint: a local file that overrides ``cfg.checkpoint`` and ``cfg.weights``.

    Raises:
        ConfigError: bad sizes; the weights cannot be fetched; the checkpoint is unreadable
            or does not fit; the model does not run at ``image_size``.

    Example:
        >>> built = build_model(
        ...     ModelConfig(name="resnet18", weights="none"), num_classes=7, image_size=32
        ... )
        >>> built.head, built.model.fc.out_features
        ('fc', 7)
    """
    for key, value in (("num_classes", num_classes), ("image_size", image_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be an integer >= 1, got {value!r}")
    found = model_source(cfg.name)
    if found is not None:
        return _build_from_source(
            cfg, *found, num_classes=num_classes, image_size=image_size, checkpoint=checkpoint
        )
    adapter = head_adapter(model_class(cfg.name), name=cfg.name)
    check_head(adapter, cfg.head, name=cfg.name)
    source = checkpoint if checkpoint is not None else cfg.checkpoint
    if source is None:
        model, loaded = create_model(cfg.name, cfg.weights)
    else:
        path = Path(source)
        state = read_state_dict(path)
        model, _ = create_model(cfg.name, NO_WEIGHTS)
        load_backbone(model, state, skip=adapter.replaced(cfg.head), source=path, name=cfg.name)
        loaded = f"checkpoint:{path.name}"
    head = replace_head(
        model, name=cfg.name, num_classes=num_classes, head=cfg.head, image_size=image_size
    )
    return BuiltModel(model=model, head=head, name=cfg.name, weights=loaded)


def _build_from_source(
    cfg: ModelConfig,
    source: ModelSource,
    known: str,
    *,
    num_classes: int,
    image_size: int,
    checkpoint: Path | None,
) -> BuiltModel:
    """:func:`build_model` for a timm or Hugging Face model: the same steps, the source's
    construction and head."""
    path = checkpoint if checkpoint is not None else cfg.checkpoint
    check_model(cfg if path is None else replace(cfg, checkpoint=str(path)))
    if path is None:
        pretrained = cfg.weights != NO_WEIGHTS
        model, loaded = source.create(known, pretrained=pretrained, image_size=image_size)
    else:
        path = Path(path)
        state = read_state_dict(path)
        model, _ = source.create(known, pretrained=False, image_size=image_size)
        state = source.fit_state(model, state)
        load_backbone(model, state, skip=source.classifier(model), source=path, name=cfg.name)
        loaded = f"checkpoint:{path.name}"
    head = source.new_head(model, num_classes)
    check_logits(model, name=cfg.name, num_classes=num_classes, image_size=image_size)
    model.train()
    return BuiltModel(model=model, head=head, name=cfg.name, weights=loaded)


def build_skeleton(recipe: Recipe) -> tuple[BuiltModel, LayerGroups]:
    """The recipe's model without pretrained weights, and its layer groups.

    Where the layer-group names that radii and penalties use come from: nothing is downloaded
    and no checkpoint is read. The head has the target task's classes for the digits task, two
    otherwise (its size does not change the groups).
    """
    from tether.finetune.layers import layer_groups

    model_cfg = replace(recipe.model, weights=NO_WEIGHTS, checkpoint=None)
    n_classes = len(recipe.data.target_classes) if recipe.data.kind == "digits" else 2
    built = build_model(model_cfg, num_classes=n_classes, image_size=recipe.data.image_size)
    return built, layer_groups(built.model, head=built.head)
