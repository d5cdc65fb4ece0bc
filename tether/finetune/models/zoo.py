"""Model names: torchvision's classification models plus the local ones, and their weights.

A name is either a torchvision classification model (``torchvision.models.list_models``), whose
pretrained weights come through torchvision's weights API (``DEFAULT``, ``IMAGENET1K_V2``, ...),
or a local model registered here with :func:`register_local_model` (``digits-cnn``), whose named
weights are local files that the caller resolves and passes as a checkpoint. Every model also
takes ``none``: random initialisation.

Only names whose family has a head adapter (:mod:`tether.finetune.models.heads`) are offered: a
torchvision model we cannot put a new classifier on is of no use for fine-tuning.

Example:
    >>> "resnet50" in list_models()
    True
    >>> weights_choices("resnet50")
    ['DEFAULT', 'IMAGENET1K_V1', 'IMAGENET1K_V2', 'none']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
import functools
import typing

from torch import nn
import torchvision

from tether.errors import ConfigError
from tether.finetune.models.config import ModelConfig
from tether.finetune.models.digits_cnn import DigitsCNN
from tether.finetune.models.heads import check_head
from tether.finetune.models.heads import head_adapter
from tether.finetune.models.heads import is_supported
from tether.registry import Registry


NO_WEIGHTS = "none"


@dataclass(frozen=True)
class LocalModel:
    """A model defined in this package rather than in torchvision.

    Attributes:
        name: the ``model.name`` that selects it.
        model_class: the class :func:`create` returns (it selects the head adapter).
        create: builds the model with random weights.
        weights: named weights besides ``none``; each names a local file that the caller
            resolves and hands to ``build_model`` as ``checkpoint``.
    """

    name: str
    model_class: type[nn.Module]
    create: Callable[[], nn.Module]
    weights: tuple[str, ...] = ()


_LOCAL: Registry[LocalModel] = Registry("model")


def register_local_model(entry: LocalModel) -> LocalModel:
    """Add a local model; its name must be new to both this registry and torchvision.

    Raises:
        ValueError: the name is taken.
    """
    if entry.name in _torchvision_names():
        raise ValueError(f"model {entry.name!r} is already registered (by torchvision)")
    return _LOCAL.add(entry.name, entry)


@functools.cache
def _torchvision_names() -> frozenset[str]:
    return frozenset(torchvision.models.list_models(module=torchvision.models))


@functools.cache
def _torchvision_class(name: str) -> type[nn.Module]:
    # Each builder is annotated with the class it returns (resnet50 -> ResNet), which tells us
    # the family without building anything.
    # A builder without that annotation gets nn.Module, which has no head adapter.
    builder = torchvision.models.get_model_builder(name)
    returned = typing.get_type_hints(builder).get("return")
    if isinstance(returned, type) and issubclass(returned, nn.Module):
        return returned
    return nn.Module


def list_models() -> list[str]:
    """Return the sorted names :func:`tether.finetune.models.build_model` accepts."""
    names = [n for n in _torchvision_names() if is_supported(_torchvision_class(n))]
    return sorted([*names, *_LOCAL.names()])


def model_class(name: str) -> type[nn.Module]:
    """Return the class of model ``name`` without building it.

    Raises:
        ConfigError: ``name`` is not a model, or its family has no head adapter.
    """
    if not isinstance(name, str) or (name not in _LOCAL and name not in _torchvision_names()):
        raise ConfigError(
            f"model.name {name!r} is not a known model; choose from {', '.join(list_models())}",
            kind="model",
        )
    cls = _LOCAL.get(name).model_class if name in _LOCAL else _torchvision_class(name)
    head_adapter(cls, name=name)
    return cls


def weights_choices(name: str) -> list[str]:
    """Return the sorted values ``model.weights`` may take for model ``name``."""
    if name in _LOCAL:
        return sorted([*_LOCAL.get(name).weights, NO_WEIGHTS])
    enum = torchvision.models.get_model_weights(name)
    return sorted([*enum.__members__, NO_WEIGHTS])


def check_weights(name: str, weights: str) -> None:
    """Check that ``weights`` names weights of model ``name``; nothing is downloaded.

    Accepts ``DEFAULT``, a member of the model's weights enum, with or without the enum's
    name (``IMAGENET1K_V2``, ``ResNet50_Weights.IMAGENET1K_V2``), ``none``, or one of a local
    model's named weights.

    Raises:
        ConfigError: it does not.
    """
    model_class(name)
    if name in _LOCAL:
        valid = isinstance(weights, str) and weights in weights_choices(name)
    else:
        valid = isinstance(weights, str) and (weights == NO_WEIGHTS or _member(name, weights))
    if valid:
        return
    owners = [m.name for m in _LOCAL.values() if weights in m.weights]
    owned = f" (it belongs to {', '.join(owners)})" if owners else ""
    raise ConfigError(
        f"model.weights {weights!r} is not a weights of {name}{owned}; "
        f"choose from {', '.join(weights_choices(name))}",
        kind="model",
    )


def check_model(cfg: ModelConfig) -> None:
    """Check a model config against what torchvision and Tether have: the name, the weights
    (unless a checkpoint replaces them) and the head. Nothing is downloaded or read.

    Raises:
        ConfigError: (kind ``model``) the first of these that is not there; the message
            lists the valid choices.

    Example:
        >>> check_model(ModelConfig(name="resnet5"))
        Traceback (most recent call last):
        ...
        tether.errors.ConfigError: model.name 'resnet5' is not a known model; choose from ...
    """
    cls = model_class(cfg.name)
    if cfg.checkpoint is None:
        check_weights(cfg.name, cfg.weights)
    check_head(head_adapter(cls, name=cfg.name), cfg.head, name=cfg.name)


def create_model(name: str, weights: str) -> tuple[nn.Module, str]:
    """Build model ``name`` with ``weights`` (downloaded by torchvision when not cached).

    The model keeps its original classifier; :func:`tether.finetune.models.heads.replace_head`
    replaces it.

    Returns:
        The model and what was loaded: the weights enum member's name (``DEFAULT`` resolved,
        e.g. ``IMAGENET1K_V2``) or ``none``.

    Raises:
        ConfigError: bad name or weights; a local model's named weights (they come as a
            checkpoint); the download failed.
    """
    check_weights(name, weights)
    if name in _LOCAL:
        if weights != NO_WEIGHTS:
            raise ConfigError(
                f"model.weights {weights!r} of {name} is a local file: pass it as "
                "model.checkpoint=PATH",
                kind="model",
            )
        return _LOCAL.get(name).create(), NO_WEIGHTS
    if weights == NO_WEIGHTS:
        return torchvision.models.get_model(name, weights=None), NO_WEIGHTS
    member = _member(name, weights)
    try:
        model = torchvision.models.get_model(name, weights=member)
    except OSError as exc:  # urllib's URLError / HTTPError, timeouts, a full disk
        reason = " ".join(str(exc).split())
        raise ConfigError(
            f"model.weights: could not fetch {type(member).__name__}.{member.name} for {name} "
            f"from {member.url} ({reason}); set model.checkpoint=PATH to load a local file "
            "instead",
            kind="model",
        ) from exc
    return model, str(member.name)


def _member(name: str, weights: str) -> typing.Any:
    """Return the weights enum member ``weights`` names, or None."""
    enum = torchvision.models.get_model_weights(name)
    prefix, _, member = weights.rpartition(".")
    if prefix not in ("", enum.__name__):
        return None
    return enum.__members__.get(member)


def _digits_cnn() -> nn.Module:
    """The digits source network; its 10-way classifier is replaced by ``build_model``."""
    return DigitsCNN(10)


register_local_model(
    LocalModel(
        name="digits-cnn",
        model_class=DigitsCNN,
        create=_digits_cnn,
        weights=("digits-source",),
    )
)
