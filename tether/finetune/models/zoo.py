"""Model names: torchvision's classification models, the local ones, timm's and Hugging Face's.

A name is one of:

- a torchvision classification model (``torchvision.models.list_models``), whose pretrained
  weights come through torchvision's weights API (``DEFAULT``, ``IMAGENET1K_V2``, ...);
- a local model registered here with :func:`register_local_model` (``digits-cnn``), whose named
  weights are local files that the caller resolves and passes as a checkpoint;
- ``timm/<name>`` (:mod:`tether.finetune.models.timm_models`), ``hf/<hub name or folder>`` or a
  folder holding a ``config.json`` (:mod:`tether.finetune.models.hf_models`): a
  :class:`ModelSource` builds them, with weights ``pretrained`` (``DEFAULT`` says the same).

Every model also takes ``none``: random initialisation.

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
import importlib
from pathlib import Path
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
PRETRAINED = "pretrained"
SOURCE_WEIGHTS = ("DEFAULT", NO_WEIGHTS, PRETRAINED)
"""``model.weights`` of a timm or Hugging Face model: ``DEFAULT`` and ``pretrained`` both load
the library's pretrained weights."""


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


@dataclass(frozen=True)
class ModelSource:
    """A library that builds the models named ``<prefix>/<its own name>`` (``timm/resnet18``).

    Each callable takes the name without the prefix, as the library knows it.

    Attributes:
        label: the library, for messages (``timm``).
        check: ``check(name, pretrained=...)``: raise :class:`ConfigError` unless the library
            is installed and has model ``name`` (with pretrained weights, when asked) and one
            classifier; nothing is downloaded or built.
        create: ``create(name, pretrained=..., image_size=...)``: the model with its own
            classifier, and what was loaded (as :attr:`BuiltModel.weights` says it).
        classifier: ``classifier(model)``: dotted name of the model's classifier, whose
            tensors a checkpoint need not fit.
        new_head: ``new_head(model, num_classes)``: put a new ``num_classes``-way
            ``nn.Linear`` in place of the classifier; its dotted name.
        fit_state: ``fit_state(model, state)``: a checkpoint's tensors in the form the model
            takes (timm resizes position embeddings to the model's image size).
    """

    label: str
    check: Callable[..., None]
    create: Callable[..., tuple[nn.Module, str]]
    classifier: Callable[[nn.Module], str]
    new_head: Callable[[nn.Module, int], str]
    fit_state: Callable[[nn.Module, dict[str, typing.Any]], dict[str, typing.Any]]


_SOURCES = {"timm": "tether.finetune.models.timm_models", "hf": "tether.finetune.models.hf_models"}
"""``model.name`` prefix -> the module whose ``SOURCE`` builds those models (imported on use)."""
HF_CONFIG = "config.json"


def model_source(name: str) -> tuple[ModelSource, str] | None:
    """The :class:`ModelSource` of model ``name`` and the name it knows, or ``None`` for a
    torchvision or local model.

    ``timm/x`` and ``hf/x`` name their library; a folder holding a ``config.json`` (and no
    torchvision or local model of that name) is a Hugging Face model.

    Raises:
        ConfigError: nothing follows the prefix.

    Example:
        >>> source, known = model_source("timm/resnet18")
        >>> source.label, known
        ('timm', 'resnet18')
        >>> model_source("resnet18") is None
        True
    """
    if not isinstance(name, str):
        return None
    prefix, slash, rest = name.partition("/")
    if not (slash and prefix in _SOURCES):
        if name in _LOCAL or name in _torchvision_names():
            return None
        if not (Path(name).expanduser() / HF_CONFIG).is_file():
            return None
        prefix, rest = "hf", name
    if not rest.strip():
        raise ConfigError(
            f"model.name {name!r} names no model after {prefix}/ (e.g. timm/resnet50, "
            "hf/google/vit-base-patch16-224)",
            kind="model",
        )
    source: ModelSource = importlib.import_module(_SOURCES[prefix]).SOURCE
    return source, rest


def check_source_model(
    source: ModelSource, known: str, *, name: str, weights: str | None, head: str
) -> None:
    """Check a model a :class:`ModelSource` builds: the library's own checks (installed, the
    name, pretrained weights if asked), the weights (``None`` when a checkpoint replaces
    them), then the head (only ``gap``).

    Raises:
        ConfigError: the first of these that fails.
    """
    known_weights = weights in SOURCE_WEIGHTS
    source.check(known, pretrained=known_weights and weights != NO_WEIGHTS)
    if weights is not None and not known_weights:
        raise ConfigError(
            f"model.weights {weights!r} is not a weights of {name}; "
            f"choose from {', '.join(sorted(SOURCE_WEIGHTS))}",
            kind="model",
        )
    if head != "gap":
        raise ConfigError(
            f"model.head {head!r} is not defined for {source.label} models (their own pooling "
            "is kept); use 'gap'",
            kind="model",
        )


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
        folder = isinstance(name, str) and Path(name).expanduser().is_dir()
        hint = (
            f" (a folder, but with no {HF_CONFIG}: not a Hugging Face model folder)"
            if folder
            else ""
        )
        raise ConfigError(
            f"model.name {name!r} is not a known model{hint}; choose from "
            f"{', '.join(list_models())}; or timm/NAME, hf/NAME, or a Hugging Face model folder",
            kind="model",
        )
    cls = _LOCAL.get(name).model_class if name in _LOCAL else _torchvision_class(name)
    head_adapter(cls, name=name)
    return cls


def weights_choices(name: str) -> list[str]:
    """Return the sorted values ``model.weights`` may take for model ``name``."""
    if model_source(name) is not None:
        return sorted(SOURCE_WEIGHTS)
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
    """Check a model config against what torchvision, timm, Hugging Face and Tether have: the
    name, the weights (unless a checkpoint replaces them) and the head. Nothing is downloaded;
    of a Hugging Face folder only ``config.json`` is read.

    Raises:
        ConfigError: (kind ``model``) the first of these that is not there; the message
            lists the valid choices.

    Example:
        >>> check_model(ModelConfig(name="resnet5"))
        Traceback (most recent call last):
        ...
        tether.errors.ConfigError: model.name 'resnet5' is not a known model; choose from ...
    """
    found = model_source(cfg.name)
    if found is not None:
        weights = None if cfg.checkpoint is not None else cfg.weights
        check_source_model(*found, name=cfg.name, weights=weights, head=cfg.head)
        return
    cls = model_class(cfg.name)
    if cfg.checkpoint is None:
        check_weights(cfg.name, cfg.weights)
    check_head(head_adapter(cls, name=cfg.name), cfg.head, name=cfg.name)


def create_model(
    name: str, weights: str, *, image_size: int | None = None
) -> tuple[nn.Module, str]:
    """Build model ``name`` with ``weights`` (downloaded by its library when not cached).

    The model keeps its original classifier; :func:`tether.finetune.models.heads.replace_head`
    (or the model's :class:`ModelSource`) replaces it. ``image_size`` is the working resolution
    a timm model that needs a fixed input size (a ViT) is built for; other models ignore it.

    Returns:
        The model and what was loaded: the weights enum member's name (``DEFAULT`` resolved,
        e.g. ``IMAGENET1K_V2``), timm's pretrained name (``resnet18.a1_in1k``), ``pretrained``
        (Hugging Face) or ``none``.

    Raises:
        ConfigError: bad name or weights; a local model's named weights (they come as a
            checkpoint); the download failed.
    """
    found = model_source(name)
    if found is not None:
        source, known = found
        check_source_model(source, known, name=name, weights=weights, head="gap")
        return source.create(known, pretrained=weights != NO_WEIGHTS, image_size=image_size)
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


def classifier_name(model: nn.Module, *, name: str) -> str:
    """Dotted name of the classifier that model ``name`` was built with (``fc``, ``head.fc``).

    Raises:
        ConfigError: the model's family has no head adapter, or its library no classifier.
    """
    found = model_source(name)
    if found is not None:
        return found[0].classifier(model)
    return head_adapter(type(model), name=name).linear


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
