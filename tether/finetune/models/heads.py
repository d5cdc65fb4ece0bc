"""The new classifier: one adapter per model family says where the old one and the pooling are.

Two heads (``model.head``):

- ``gap`` (default): keep the global pooling and replace the final ``nn.Linear`` by
  ``Linear(in_features, num_classes)``; what torchvision's fine-tuning recipes do. For a ViT
  this is the class-token head ``heads.head``.
- ``flatten``: replace the global pooling by ``nn.Identity`` and put ``Linear(C*h*w,
  num_classes)`` on the flattened final feature map, whose size at the working resolution is
  found with one forward pass of a blank image. This is the head of the MARS-PGM reference
  code (Keras ``Flatten`` + ``Dense`` on the 7x7xC map; Gouk et al., ICLR 2021), and the reason
  its tuned classifier radii are large. Not defined for a ViT, which has no final feature map.

The new ``Linear`` keeps PyTorch's default initialisation (weight Kaiming-uniform with
``a=sqrt(5)``, bias uniform in ``+-1/sqrt(in_features)``), drawn from the global torch RNG, so a
seeded run gets the same head every time.

Families are keyed by model class (a subclass matches its base's adapter):

================  ======================  =========  ===========================================
family            ``gap`` head            pooling    ``flatten`` head
================  ======================  =========  ===========================================
resnet            ``fc``                  avgpool    ``fc`` (ResNet, ResNeXt, Wide-ResNet)
efficientnet      ``classifier.1``        avgpool    ``classifier.1`` (after the dropout)
mobilenet_v3      ``classifier.3``        avgpool    ``classifier``: the whole MLP, whose first
                                                     layer expects pooled features
convnext          ``classifier.2``        avgpool    ``classifier.2``; the pretrained LayerNorm2d
                                                     before it normalises each position
vit               ``heads.head``          none       not defined
digits-cnn        ``fc``                  avgpool    ``fc``
================  ======================  =========  ===========================================

A timm or Hugging Face model has no adapter: its :class:`~tether.finetune.models.zoo.ModelSource`
puts the new classifier in place (timm's ``reset_classifier``), only as ``gap``, and
:func:`check_logits` runs it once as :func:`replace_head` does.

Example:
    >>> from torchvision.models import resnet18
    >>> model = resnet18()
    >>> replace_head(model, name="resnet18", num_classes=7, head="flatten", image_size=64)
    'fc'
    >>> model.fc
    Linear(in_features=2048, out_features=7, bias=True)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models import ConvNeXt
from torchvision.models import EfficientNet
from torchvision.models import MobileNetV3
from torchvision.models import ResNet
from torchvision.models import VisionTransformer

from tether.errors import ConfigError
from tether.finetune.models.config import HEADS
from tether.finetune.models.digits_cnn import DigitsCNN
from tether.registry import Registry


@dataclass(frozen=True)
class HeadAdapter:
    """Where one model family keeps its classifier and its global pooling.

    Attributes:
        family: short name shown in messages (``resnet``).
        model_class: the class it serves, subclasses included.
        linear: dotted name of the final ``nn.Linear``, replaced by the ``gap`` head.
        pool: dotted name of the global pooling that ``flatten`` replaces by ``nn.Identity``;
            ``None`` when the family has no feature map to flatten.
        flatten_replaces: the module the ``flatten`` head replaces when it is not ``linear``
            (a classifier MLP whose first layer expects pooled features).
    """

    family: str
    model_class: type[nn.Module]
    linear: str
    pool: str | None = "avgpool"
    flatten_replaces: str | None = None

    def replaced(self, head: str) -> str:
        """Return the dotted name of the module that ``head`` replaces."""
        if head == "flatten" and self.flatten_replaces is not None:
            return self.flatten_replaces
        return self.linear


_ADAPTERS: Registry[HeadAdapter] = Registry("head adapter")


def register_head_adapter(adapter: HeadAdapter) -> HeadAdapter:
    """Add the adapter of a model family.

    Raises:
        ValueError: the class or the family name already has one.
    """
    if any(a.model_class is adapter.model_class for a in _ADAPTERS.values()):
        raise ValueError(
            f"a head adapter for {adapter.model_class.__name__} is already registered"
        )
    return _ADAPTERS.add(adapter.family, adapter)


def list_head_families() -> list[str]:
    """Return the sorted family names that have a head adapter."""
    return _ADAPTERS.names()


def is_supported(model_class: type[nn.Module]) -> bool:
    """Whether ``model_class`` (or one of its bases) has a head adapter."""
    return _adapter_of(model_class) is not None


def _adapter_of(model_class: type[nn.Module]) -> HeadAdapter | None:
    """The adapter of the first class along ``model_class``'s MRO that has one."""
    by_class = {a.model_class: a for a in _ADAPTERS.values()}
    return next((by_class[c] for c in model_class.__mro__ if c in by_class), None)


def head_adapter(model_class: type[nn.Module], *, name: str) -> HeadAdapter:
    """Return the adapter of ``model_class``, the first one found along its MRO.

    Args:
        model_class: the model's class.
        name: the model name, for the message.

    Raises:
        ConfigError: no adapter; the message lists the supported families.
    """
    adapter = _adapter_of(model_class)
    if adapter is not None:
        return adapter
    raise ConfigError(
        f"model.name {name!r} is a {model_class.__name__}, a family with no head adapter; "
        f"supported families: {', '.join(list_head_families())}",
        kind="model",
    )


def check_head(adapter: HeadAdapter, head: str, *, name: str) -> None:
    """Check that ``head`` is a head and that the family supports it.

    Raises:
        ConfigError: it is not, or it does not.
    """
    if head not in HEADS:
        raise ConfigError(f"model.head {head!r} is not a head; choose from {', '.join(HEADS)}")
    if head == "flatten" and adapter.pool is None:
        raise ConfigError(
            f"model.head 'flatten' is not defined for {name} ({adapter.family} has no final "
            "feature map to flatten); use 'gap'",
            kind="model",
        )


def replace_head(
    model: nn.Module, *, name: str, num_classes: int, head: str, image_size: int
) -> str:
    """Put a new ``Linear(..., num_classes)`` classifier on ``model``, in place.

    Runs the model on a blank ``image_size`` x ``image_size`` image in eval mode and under
    ``torch.no_grad`` (once more for ``flatten``, to size the feature map), so that a size the
    model cannot take fails here rather than in the first batch. BatchNorm statistics are not
    touched and the train/eval mode is restored.

    Args:
        model: a model of a family with a head adapter.
        name: the model name, for messages.
        num_classes: the classifier's output size.
        head: ``gap`` or ``flatten`` (see the module docstring).
        image_size: the working resolution.

    Returns:
        The dotted name of the new ``nn.Linear`` (``fc``, ``classifier.1``, ``heads.head``).

    Raises:
        ConfigError: unknown family or head; the model does not run at ``image_size``.
    """
    adapter = head_adapter(type(model), name=name)
    check_head(adapter, head, name=name)
    target = adapter.replaced(head)
    in_features = _IN_FEATURES[head](model, adapter, name, image_size)
    set_submodule(model, target, nn.Linear(in_features, num_classes))
    check_logits(model, name=name, num_classes=num_classes, image_size=image_size)
    return target


def check_logits(model: nn.Module, *, name: str, num_classes: int, image_size: int) -> None:
    """Run ``model`` once on a blank ``image_size`` image (eval mode, no grad, mode restored)
    and check that it returns ``[1, num_classes]`` logits.

    Raises:
        ConfigError: the model does not run at ``image_size``.
        RuntimeError: it returns another shape (a broken head surgery, not a user error).
    """
    out = _probe(model, name, image_size)
    if tuple(out.shape) != (1, num_classes):
        raise RuntimeError(f"{name} with a new head returns {list(out.shape)}")


def _gap_in_features(model: nn.Module, adapter: HeadAdapter, name: str, image_size: int) -> int:
    old = model.get_submodule(adapter.linear)
    if not isinstance(old, nn.Linear):
        raise TypeError(f"{name}.{adapter.linear} is a {type(old).__name__}, not an nn.Linear")
    return old.in_features


def _flatten_in_features(
    model: nn.Module, adapter: HeadAdapter, name: str, image_size: int
) -> int:
    if adapter.pool is None:
        raise TypeError(f"{adapter.family} has no pooling to remove")
    set_submodule(model, adapter.pool, nn.Identity())
    set_submodule(model, adapter.replaced("flatten"), nn.Identity())
    features = _probe(model, name, image_size)
    return int(features[0].numel())


_IN_FEATURES: dict[str, Callable[[nn.Module, HeadAdapter, str, int], int]] = {
    "flatten": _flatten_in_features,
    "gap": _gap_in_features,
}


def _probe(model: nn.Module, name: str, image_size: int) -> torch.Tensor:
    """Run ``model`` on one blank image in eval mode; the output, or a ConfigError."""
    first = next((p for p in model.parameters()), None)
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    channels = conv.in_channels if conv is not None else 3
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None else torch.float32
    image = torch.zeros(1, channels, image_size, image_size, device=device, dtype=dtype)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(image)
    except (RuntimeError, ValueError, AssertionError) as exc:
        reason = " ".join(str(exc).split())
        raise ConfigError(
            f"model.name {name!r} does not run on {image_size}x{image_size} images "
            f"(data.image_size): {reason}",
            kind="model",
        ) from exc
    finally:
        model.train(training)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{name} returns a {type(out).__name__}, not a tensor")
    return out


def set_submodule(model: nn.Module, target: str, module: nn.Module) -> None:
    """Put ``module`` at dotted name ``target`` of ``model`` (replacing what is there)."""
    parent, _, child = target.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


register_head_adapter(HeadAdapter("resnet", ResNet, linear="fc"))
register_head_adapter(HeadAdapter("efficientnet", EfficientNet, linear="classifier.1"))
register_head_adapter(
    HeadAdapter("mobilenet_v3", MobileNetV3, linear="classifier.3", flatten_replaces="classifier")
)
register_head_adapter(HeadAdapter("convnext", ConvNeXt, linear="classifier.2"))
register_head_adapter(HeadAdapter("vit", VisionTransformer, linear="heads.head", pool=None))
register_head_adapter(HeadAdapter("digits-cnn", DigitsCNN, linear="fc"))
