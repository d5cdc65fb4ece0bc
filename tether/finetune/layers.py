"""Layer groups: the named parts of an architecture that get their own radius.

A group is a set of module-name prefixes (``"layer3"`` owns every parameter under
``layer3.*``). Groups are listed from the input to the output; the new classifier is always
the last group, ``"head"``. Radii, penalties and the distances a run reports are all keyed by
these names, so ``tether finetune --list-groups`` shows what a recipe may name.

Families (chosen by the model's class, the first matching rule wins):

========================  ==========================================================
ResNet / ResNeXt / WRN    ``stem`` (conv1, bn1), ``layer1`` .. ``layer4``
EfficientNet, MobileNet   ``features.0`` .. ``features.N``, ``neck`` (pretrained
                          classifier layers before the new head, if any)
ConvNeXt                  ``features.0`` (stem) .. ``features.7`` (stages, downsamples),
                          ``neck`` (the classifier's LayerNorm)
ViT                       ``embed`` (patch conv, class token, positions), then four
                          bands of encoder blocks ``blocks.0`` .. ``blocks.3``
DigitsCNN                 ``block1`` .. ``block3``
timm models               timm's own ``group_matcher(coarse=True)``: ``stem``, one
                          group per stage named by its module (``layer1``,
                          ``blocks.3``, ``stages.2``), ``neck`` (what timm leaves
                          unmatched besides the classifier)
transformers classifiers  ``embed`` (all before the encoder's layer list), four bands
                          of layers ``blocks.0`` .. ``blocks.3``, ``neck`` (the rest)
anything else             ``extractor``
========================  ==========================================================

The timm and transformers rules come first: timm's classes share names with torchvision's.

Example:
    >>> from torchvision.models import resnet18
    >>> groups = layer_groups(resnet18(), head="fc")
    >>> groups.names
    ('stem', 'layer1', 'layer2', 'layer3', 'layer4', 'head')
    >>> groups.group_of("layer2.0.conv1")
    'layer2'
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field

import torch
from torch import nn

from tether.errors import ConfigError
from tether.registry import Registry


HEAD = "head"


@dataclass(frozen=True)
class LayerGroups:
    """Ordered groups of module-name prefixes; the last group is the new head.

    Args:
        prefixes: group name -> module-name prefixes, in depth order, head last.
    """

    prefixes: Mapping[str, tuple[str, ...]]
    _lookup: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = list(self.prefixes)
        if not names or names[-1] != HEAD:
            raise ValueError(f"the last layer group must be {HEAD!r}, got {names!r}")
        lookup: dict[str, str] = {}
        for group, prefixes in self.prefixes.items():
            for prefix in prefixes:
                if prefix in lookup:
                    raise ValueError(
                        f"module {prefix!r} is in groups {lookup[prefix]!r} and {group!r}"
                    )
                lookup[prefix] = group
        object.__setattr__(self, "_lookup", lookup)

    @property
    def names(self) -> tuple[str, ...]:
        """Every group name, input side first, ``"head"`` last."""
        return tuple(self.prefixes)

    @property
    def extractor(self) -> tuple[str, ...]:
        """The pretrained groups (every group but the head)."""
        return self.names[:-1]

    def group_of(self, name: str) -> str | None:
        """The group owning a module or parameter name, by longest matching prefix."""
        parts = name.split(".")
        for end in range(len(parts), 0, -1):
            group = self._lookup.get(".".join(parts[:end]))
            if group is not None:
                return group
        return self._lookup.get("")

    def check_names(self, names: Sequence[str], *, what: str) -> None:
        """Raise :class:`ConfigError` if a name is not an extractor group."""
        unknown = [n for n in names if n not in self.extractor]
        if unknown:
            raise ConfigError(
                f"{what} names unknown layer group {unknown[0]!r}; "
                f"this model has {', '.join(self.extractor)} (and {HEAD!r})"
            )


_Rule = Callable[[nn.Module], dict[str, tuple[str, ...]]]
_RULES: Registry[tuple[Callable[[nn.Module], bool], _Rule]] = Registry("layer-group family")


def register_groups(family: str, matches: Callable[[nn.Module], bool]) -> Callable[[_Rule], _Rule]:
    """Register the extractor grouping of a model family (a new family is one function)."""

    def decorator(rule: _Rule) -> _Rule:
        _RULES.add(family, (matches, rule))
        return rule

    return decorator


def _class_named(*names: str) -> Callable[[nn.Module], bool]:
    return lambda model: type(model).__name__ in names


def _children(model: nn.Module, names: Sequence[str]) -> dict[str, tuple[str, ...]]:
    return {name: (name,) for name in names if hasattr(model, name)}


def prefix_groups(
    model: nn.Module, members: Mapping[str, Sequence[str]]
) -> dict[str, tuple[str, ...]]:
    """Groups given as parameter names, as the fewest module-name prefixes.

    A module (or a parameter) becomes a prefix of a group when every parameter under it is a
    member of that group; a parameter in no group keeps its modules out of every prefix.
    For the rules of libraries whose groups are sets of parameters (timm, transformers).

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
        >>> prefix_groups(model, {"a": ["0.weight", "0.bias", "1.0.bias"], "b": ["1.0.weight"]})
        {'a': ('0', '1.0.bias'), 'b': ('1.0.weight',)}
    """
    owner = {param: group for group, params in members.items() for param in params}
    names = [name for name, _ in model.named_parameters()]
    below: dict[str, set[str | None]] = {}
    for name in names:
        for prefix in _ancestors(name):
            below.setdefault(prefix, set()).add(owner.get(name))
    chosen: dict[str, dict[str, None]] = {group: {} for group in members}
    for name in names:
        group = owner.get(name)
        if group is not None:
            prefix = next(p for p in _ancestors(name) if below[p] == {group})
            chosen[group][prefix] = None
    return {group: tuple(prefixes) for group, prefixes in chosen.items() if prefixes}


def _ancestors(name: str) -> list[str]:
    """``"a.b.c"`` -> ``["a", "a.b", "a.b.c"]``."""
    parts = name.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts) + 1)]


def _from_library(library: str) -> Callable[[nn.Module], bool]:
    return lambda model: any(c.__module__.split(".")[0] == library for c in type(model).__mro__)


@register_groups("timm", _from_library("timm"))
def _timm(model: nn.Module) -> dict[str, tuple[str, ...]]:
    from tether.finetune.models.timm_models import timm_groups

    return timm_groups(model)


@register_groups("transformers", _from_library("transformers"))
def _transformers(model: nn.Module) -> dict[str, tuple[str, ...]]:
    from tether.finetune.models.hf_models import hf_groups

    return hf_groups(model)


@register_groups("resnet", _class_named("ResNet"))
def _resnet(model: nn.Module) -> dict[str, tuple[str, ...]]:
    return {"stem": ("conv1", "bn1"), **_children(model, ["layer1", "layer2", "layer3", "layer4"])}


@register_groups(
    "features", _class_named("EfficientNet", "MobileNetV2", "MobileNetV3", "ConvNeXt")
)
def _features(model: nn.Module) -> dict[str, tuple[str, ...]]:
    n_features = len(list(model.get_submodule("features").children()))
    groups: dict[str, tuple[str, ...]] = {
        f"features.{i}": (f"features.{i}",) for i in range(n_features)
    }
    # MobileNetV3's pretrained Linear and ConvNeXt's LayerNorm sit in `classifier` before the head.
    groups["neck"] = ("classifier",)
    return groups


@register_groups("vit", _class_named("VisionTransformer"))
def _vit(model: nn.Module, n_bands: int = 4) -> dict[str, tuple[str, ...]]:
    layers = [
        f"encoder.layers.{name}"
        for name, _ in model.get_submodule("encoder.layers").named_children()
    ]
    groups: dict[str, tuple[str, ...]] = {
        "embed": ("conv_proj", "class_token", "encoder.pos_embedding")
    }
    bands = min(n_bands, len(layers))
    for band in range(bands):
        start, stop = band * len(layers) // bands, (band + 1) * len(layers) // bands
        groups[f"blocks.{band}"] = tuple(layers[start:stop])
    last = list(groups)[-1]
    groups[last] = (*groups[last], "encoder.ln")
    return groups


@register_groups("digits-cnn", _class_named("DigitsCNN"))
def _digits(model: nn.Module) -> dict[str, tuple[str, ...]]:
    return _children(model, ["block1", "block2", "block3"])


_WRAPPERS = {"DataParallel": "module", "DistributedDataParallel": "module",
             "OptimizedModule": "_orig_mod"}  # fmt: skip
"""Wrappers that hold the user's model as an attribute, and its name: their parameters are
the model's, under a prefix (``module.``, ``_orig_mod.``) that no group or head name has."""


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DataParallel, DistributedDataParallel and ``torch.compile`` wrappers.

    Raises:
        ConfigError: the parameters are sharded (FSDP, DeepSpeed ZeRO-3): a row is then not
            on one device, and a projection of each row cannot be made locally.

    Example:
        >>> inner = nn.Linear(2, 2)
        >>> unwrap(nn.DataParallel(inner)) is inner
        True
    """
    while type(model).__name__ in _WRAPPERS:
        model = getattr(model, _WRAPPERS[type(model).__name__])
    sharded = type(model).__name__ == "FullyShardedDataParallel" or any(
        hasattr(p, "ds_id") or type(p).__name__ == "DTensor" or type(p.data).__name__ == "DTensor"
        for p in model.parameters()
    )
    if sharded:
        raise ConfigError(
            "the model's parameters are sharded (FSDP or ZeRO-3): a distance constraint needs "
            "every row of a tensor on one device; use DDP, or gather the parameters"
        )
    return model


def layer_groups(model: nn.Module, *, head: str) -> LayerGroups:
    """Group a model's modules for per-layer radii.

    Args:
        model: the network, with its new classifier already in place.
        head: dotted name of the new classifier module (``"fc"``, ``"classifier.1"``).

    Returns:
        The groups of the first registered family that matches ``model``; any other model
        gets one ``"extractor"`` group for everything outside the head.
    """
    try:
        model.get_submodule(head)
    except AttributeError:
        raise ConfigError(f"the model has no module named {head!r} to use as the head") from None
    for matches, rule in _RULES.values():
        if matches(model):
            groups = {g: tuple(x for x in p if x != head) for g, p in rule(model).items()}
            owned = {g: p for g, p in groups.items() if _has_params(model, p, head)}
            return LayerGroups({**owned, HEAD: (head,)})
    return LayerGroups({"extractor": ("",), HEAD: (head,)})


def _has_params(model: nn.Module, prefixes: tuple[str, ...], head: str) -> bool:
    """Whether a group owns any parameter outside the head (empty groups are dropped)."""
    for name, _ in model.named_parameters():
        if name.startswith(head + "."):
            continue
        if any(name == p or name.startswith(p + ".") or not p for p in prefixes):
            return True
    return False


def geometric_radii(groups: Sequence[str], *, base: float, scale: float) -> dict[str, float]:
    """Layer-wise radii growing with depth: group k gets ``base * scale**k``.

    This is the schedule of Li & Zhang (NeurIPS 2021), where deeper, more task-specific
    layers may move further. Their ResNet code starts the count at ``layer1`` and leaves the
    stem free; here every extractor group is counted, the first one with ``k = 0``.

    Example:
        >>> geometric_radii(["layer1", "layer2", "layer3"], base=0.1, scale=2.0)
        {'layer1': 0.1, 'layer2': 0.2, 'layer3': 0.4}
    """
    if not base > 0:
        raise ConfigError(f"radius base must be > 0, got {base!r}")
    if not scale > 0:
        raise ConfigError(f"radius scale must be > 0, got {scale!r}")
    return {group: base * scale**k for k, group in enumerate(groups)}


@dataclass(frozen=True)
class GroupSummary:
    """What one group holds: for ``tether finetune --list-groups``."""

    name: str
    n_tensors: int
    n_params: int


def summarize_groups(model: nn.Module, groups: LayerGroups) -> list[GroupSummary]:
    """Count the parameter tensors and scalars of every group (unowned ones as ``"-"``)."""
    tensors: dict[str, int] = dict.fromkeys((*groups.names, "-"), 0)
    scalars: dict[str, int] = dict.fromkeys(tensors, 0)
    for name, param in model.named_parameters():
        group = groups.group_of(name) or "-"
        tensors[group] += 1
        scalars[group] += param.numel()
    return [GroupSummary(g, tensors[g], scalars[g]) for g in tensors if tensors[g] or g != "-"]


def parameter_groups(model: nn.Module, groups: LayerGroups) -> dict[str, list[torch.nn.Parameter]]:
    """The parameters of each group, in model order (unowned parameters are left out)."""
    out: dict[str, list[nn.Parameter]] = {g: [] for g in groups.names}
    for name, param in model.named_parameters():
        group = groups.group_of(name)
        if group is not None:
            out[group].append(param)
    return out
