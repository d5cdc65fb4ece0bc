"""timm models: ``model.name: timm/<name>``, timm's own name, a pretrained tag allowed
(``timm/resnet18``, ``timm/vit_tiny_patch16_224.augreg_in21k``).

Needs the ``timm`` package (``pip install tether[timm]``); it is imported when such a name is
first used, so ``import tether`` does not import it.

- Weights: ``pretrained`` (or ``DEFAULT``) is ``timm.create_model(name, pretrained=True)``,
  which downloads them on first use and caches them; ``none`` is timm's random initialisation;
  ``model.checkpoint`` loads a local file into the randomly initialised model, after the
  model's own ``checkpoint_filter_fn`` (the one timm applies to its pretrained files, which
  resizes a ViT's position embeddings to the model's image size).
- Image size: a model whose pretrained config says ``fixed_input_size`` (the ViTs) is built
  with ``img_size=data.image_size``; timm then resizes pretrained position embeddings to it.
- Head: ``model.reset_classifier(num_classes)``; the new classifier is the module that
  ``pretrained_cfg["classifier"]`` names (``fc``, ``head``, ``head.fc``, ``classifier``). It
  must be one ``nn.Linear``: distilled models with two classifiers are refused. Only the
  ``gap`` head: timm's own pooling is kept.
- Layer groups (:func:`timm_groups`): timm's ``model.group_matcher(coarse=True)`` as
  ``timm.models.group_parameters`` applies it, the grouping timm's layer-wise learning-rate
  decay uses.

Example:
    >>> from tether.finetune.models import ModelConfig, build_model
    >>> built = build_model(
    ...     ModelConfig(name="timm/resnet18", weights="none"), num_classes=5, image_size=32
    ... )
    >>> built.head, built.model.fc.out_features
    ('fc', 5)
"""

from __future__ import annotations

import difflib
import itertools
import re
import sys
from types import ModuleType
from typing import Any

from torch import nn

from tether.errors import ConfigError
from tether.errors import one_line
from tether.finetune.layers import HEAD
from tether.finetune.layers import prefix_groups
from tether.finetune.models.zoo import NO_WEIGHTS
from tether.finetune.models.zoo import ModelSource


PREFIX = "timm/"
STEM = "stem"
NECK = "neck"
EXTRACTOR = "extractor"
_SUGGESTED = 3


def _require_timm(name: str) -> ModuleType:
    """The ``timm`` package, or one line that says how to install it."""
    try:
        import timm
    except ImportError:
        raise ConfigError(
            f"model.name {PREFIX + name!r} needs the timm package: install tether[timm]",
            kind="model",
        ) from None
    return timm


def check(name: str, *, pretrained: bool) -> None:
    """Check that timm has model ``name``, with pretrained weights if asked, and one classifier.

    Nothing is downloaded or built.

    Raises:
        ConfigError: timm is not installed; an unknown name (with the closest names) or tag;
            no pretrained weights; two classifiers.
    """
    timm = _require_timm(name)
    if not timm.models.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=_SUGGESTED)
        hint = f"; did you mean {', '.join(PREFIX + c for c in close)}?" if close else ""
        raise ConfigError(
            f"model.name {PREFIX + name!r} is not a timm model{hint} (timm.list_models() "
            "lists them)",
            kind="model",
        )
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # a tag the architecture does not have
        arch, _ = timm.models.split_model_name_tag(name)
        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
        raise ConfigError(
            f"model.name {PREFIX + name!r}: timm has no such pretrained tag for {arch}; "
            f"its tags: {', '.join(tags) or 'none'}",
            kind="model",
        ) from None
    if pretrained and not timm.models.is_model_pretrained(name):
        raise ConfigError(
            f"model.weights: timm has no pretrained weights for {name}; use model.weights=none "
            "or model.checkpoint=PATH",
            kind="model",
        )
    classifier = None if cfg is None else cfg.classifier
    if classifier is not None and not isinstance(classifier, str):
        raise ConfigError(
            f"model.name {PREFIX + name!r} has {len(classifier)} classifiers "
            f"({', '.join(classifier)}); Tether fine-tunes models with one",
            kind="model",
        )


def create(name: str, *, pretrained: bool, image_size: int | None = None) -> tuple[nn.Module, str]:
    """``timm.create_model(name)`` with its own classifier, at ``image_size`` if it needs one.

    Returns:
        The model (train mode) and what was loaded: the pretrained name with its tag
        (``resnet18.a1_in1k``) or ``none``.

    Raises:
        ConfigError: the download failed; the model cannot be built for ``image_size``.
    """
    timm = _require_timm(name)
    cfg = timm.models.get_pretrained_cfg(name)
    sized = image_size is not None and cfg is not None and cfg.fixed_input_size
    kwargs: dict[str, Any] = {"img_size": image_size} if sized else {}
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except OSError as exc:  # urllib's and huggingface_hub's errors, timeouts, a full disk
        raise ConfigError(
            f"model.weights: could not fetch the pretrained weights of {PREFIX + name} "
            f"({one_line(exc)}); set model.checkpoint=PATH to load a local file instead",
            kind="model",
        ) from exc
    except (AssertionError, ValueError, RuntimeError) as exc:
        if not sized:
            raise
        raise ConfigError(
            f"model.name {PREFIX + name!r} cannot be built for {image_size}x{image_size} "
            f"images (data.image_size): {one_line(exc)}",
            kind="model",
        ) from exc
    model.train()
    if not pretrained:
        return model, NO_WEIGHTS
    own = model.pretrained_cfg
    return model, f"{own.get('architecture', name)}.{own.get('tag', '')}".rstrip(".")


def classifier(model: nn.Module) -> str:
    """The dotted name of the classifier, from ``model.pretrained_cfg["classifier"]``.

    Raises:
        ConfigError: the model names none, or two.
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("classifier")
    if not isinstance(name, str):
        raise ConfigError(
            f"timm model {type(model).__name__} has no single classifier "
            f"(pretrained_cfg['classifier'] is {name!r}); Tether fine-tunes models with one",
            kind="model",
        )
    return name


def new_head(model: nn.Module, num_classes: int) -> str:
    """``model.reset_classifier(num_classes)``; the dotted name of the new ``nn.Linear``.

    Raises:
        ConfigError: the new classifier is not one ``nn.Linear``.
    """
    reset = getattr(model, "reset_classifier", None)
    if not callable(reset):
        raise ConfigError(
            f"timm model {type(model).__name__} has no reset_classifier()", kind="model"
        )
    reset(num_classes)
    head = classifier(model)
    module = model.get_submodule(head)
    if not isinstance(module, nn.Linear):
        raise ConfigError(
            f"timm model {type(model).__name__}'s classifier {head!r} is a "
            f"{type(module).__name__}, not an nn.Linear; Tether's head is one linear layer",
            kind="model",
        )
    return head


def fit_state(model: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """``state`` through the model's ``checkpoint_filter_fn``, as timm loads pretrained files.

    The filter converts other layouts of the same network and resizes position embeddings;
    a model without one, or a state it cannot take, is returned as it came (the strict load
    that follows then says what does not fit).
    """
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if not callable(filter_fn):
        return state
    try:
        return dict(filter_fn(dict(state), model))
    except Exception:  # a filter written for other layouts: load the file as it is
        return state


def timm_groups(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Tether's layer groups of a timm model, head excluded, from timm's own grouping.

    ``timm.models.group_parameters(model, model.group_matcher(coarse=True))`` orders the
    parameters into groups by the matcher's ordinals (the stem first, then the stages); a
    match marked ``MATCH_PREV_GROUP`` joins the group before it (a ViT's final norm joins its
    last block), and what no pattern matches (the classifier, a pre-logits norm) comes last.
    Here the classifier's parameters are left to the head, the rest of the unmatched ones
    form ``neck``, the stem is ``stem``, and each other group is named by the module its
    first parameter matched (``layer1``, ``blocks.3``, ``stages.2``), or ``blocks.<i>`` in
    order when those names are not distinct modules.

    Example:
        >>> import timm
        >>> model = timm.create_model("resnet18", num_classes=3)
        >>> list(timm_groups(model))
        ['stem', 'layer1', 'layer2', 'layer3', 'layer4']
    """
    from timm.models import group_parameters

    head = classifier(model)

    def outside_head(params: list[str]) -> list[str]:
        return [p for p in params if p != head and not p.startswith(head + ".")]

    group_matcher = getattr(model, "group_matcher", None)
    if not callable(group_matcher):
        return prefix_groups(model, {EXTRACTOR: outside_head(_parameter_names(model))})
    matcher = group_matcher(coarse=True)
    names: list[str | None] = []
    members: list[list[str]] = []
    for _, params in sorted(group_parameters(model, matcher).items()):
        if outside_head(params):
            names.append(_group_name(matcher, params[0]))
            members.append(outside_head(params))
    return prefix_groups(model, dict(zip(_distinct(names), members, strict=True)))


def _distinct(names: list[str | None]) -> list[str]:
    """``names`` if each is a distinct name; else ``stem``, ``blocks.<i>`` ..., ``neck``."""
    if None not in names and len(set(names)) == len(names) and HEAD not in names:
        return [n for n in names if n is not None]
    count = itertools.count()
    return [
        n if n in (STEM, NECK) and names.count(n) == 1 else f"blocks.{next(count)}" for n in names
    ]


def _parameter_names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_parameters()]


def _group_name(matcher: Any, param: str) -> str | None:
    """``stem``, ``neck`` (matched by nothing), or the module ``param`` matched (``layer1``).

    Follows timm's reading of a matcher dict: its keys in order, each a pattern or a list
    of ``(pattern, suffix)``; the first pattern that matches the start of the name wins.
    """
    if not isinstance(matcher, dict):
        return None
    for key, spec in matcher.items():
        if spec is None:
            continue
        patterns = [spec] if isinstance(spec, str) else [entry[0] for entry in spec]
        for pattern in patterns:
            found = re.match(pattern, param)
            if found is None:
                continue
            if key == STEM:
                return STEM
            module = found.group(0).rstrip(".")
            return module if param == module or param.startswith(module + ".") else None
    return NECK


SOURCE = ModelSource(
    label="timm",
    check=check,
    create=create,
    classifier=classifier,
    new_head=new_head,
    fit_state=fit_state,
)
