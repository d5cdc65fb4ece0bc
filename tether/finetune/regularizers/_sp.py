"""Starting-point penalties: L2-SP and its L1 and Fisher-weighted variants, and the penalty
forms of the MARS and Frobenius distances."""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from tether.errors import ConfigError
from tether.finetune.layers import HEAD
from tether.finetune.layers import LayerGroups
from tether.finetune.layers import layer_groups
from tether.finetune.layers import unwrap
from tether.finetune.regularizers._base import BasePenalty
from tether.finetune.regularizers._reference import Reference
from tether.finetune.regularizers._targets import Kind
from tether.finetune.regularizers._targets import Target
from tether.finetune.regularizers._targets import collect_targets
from tether.finetune.regularizers._targets import is_transposed_linear


Distance = Literal["squared", "l1", "mars"]
Include = Literal["weights", "all"]


class DistancePenalty(BasePenalty):
    """``alpha * sum_layers d(W, W0) + beta * d(W_head, 0)``: a distance as a loss term.

    Five published forms are presets of this one class (see the registry):

    * ``l2-sp`` (Li, Grandvalet, Davoine, ICML 2018):
      ``alpha/2 ||w_S - w0_S||^2 + beta/2 ||w_head||^2`` over the conv and linear weights
      (``include="weights"``, the authors' code) or every pretrained parameter (``"all"``);
    * ``l1-sp`` (same paper; ``wd_mode 4`` of the authors' code):
      ``alpha * sum |w_S - w0_S| + beta/2 ||w_head||^2``: L1 on the pretrained layers, but the
      head keeps L2-SP's squared term, as in the code (``distance="l1"``,
      ``head_distance="squared"``, ``half=True``);
    * ``l2-sp-fisher`` (same paper; ``wd_mode 6``):
      ``alpha/2 sum F * (w_S - w0_S)^2 + beta/2 ||w_head||^2`` with a per-element
      ``importance`` F (:mod:`tether.finetune.regularizers._fisher`);
    * ``frob-sp`` (MARS code's "penalty, frob"): the same as ``l2-sp`` without the halves,
      BatchNorm and LayerNorm gamma included as plain tensors;
    * ``mars-sp`` (Gouk et al. 2021): ``alpha * sum_layers max_j ||W_j - W0_j||_1`` plus
      ``beta * max_j ||W_head,j||_1`` (not squared), gammas as ``sum_i |g_i - g0_i|``.

    Args:
        model: the network, its current weights taken as W0; a DataParallel,
            DistributedDataParallel or ``torch.compile`` wrapper is looked through (group,
            head and parameter names are the inner model's).
        head: dotted name of the new head (measured from zero).
        distance: of the pretrained layers' term: ``"squared"`` (sum of squares), ``"l1"``
            (sum of absolute values) or ``"mars"`` (max absolute row sum, per tensor).
        alpha: weight of the pretrained layers' term.
        beta: weight of the head's term.
        half: multiply the squared terms by 1/2 (L2-SP's convention, TensorFlow's
            ``l2_loss``); l1 and mars terms are never halved.
        include: ``"weights"`` (conv, linear and, unless ``half``, norm-layer gammas) or
            ``"all"`` (every parameter of the pretrained groups, biases included).
        groups: layer groups; by default :func:`tether.finetune.layers.layer_groups`.
        head_distance: the head's distance; by default ``distance``.
        importance: per-element weights of the squared pretrained term,
            ``{parameter name: tensor of its shape}``, one for every pretrained tensor the
            penalty acts on (``distance="squared"`` only).

    Raises:
        ConfigError: a negative weight, a bad ``include``, or an ``importance`` that misses a
            pretrained tensor or has another shape (the message names the tensor).

    Example:
        >>> from torchvision.models import resnet18
        >>> model = resnet18(num_classes=3)
        >>> penalty = DistancePenalty(model, head="fc", distance="squared", alpha=0.1, beta=0.01)
        >>> at_w0 = penalty(torch.zeros(1)).item()  # only the head term: beta ||W_head||^2
        >>> round(at_w0 / (0.01 * model.fc.weight.detach().pow(2).sum().item()), 5)
        1.0
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        head: str,
        distance: Distance,
        alpha: float,
        beta: float,
        half: bool = False,
        include: Include = "weights",
        groups: LayerGroups | None = None,
        head_distance: Distance | None = None,
        importance: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        model = unwrap(model)
        for key, value in (("alpha", alpha), ("beta", beta)):
            if not value >= 0:
                raise ConfigError(f"penalty.{key} must be >= 0, got {value!r}")
        if include not in ("weights", "all"):
            raise ConfigError(f"penalty.include must be 'weights' or 'all', got {include!r}")
        if importance is not None and distance != "squared":
            raise ValueError(f"importance weights need distance='squared', got {distance!r}")
        self.distance = distance
        self.head_distance = head_distance if head_distance is not None else distance
        self.alpha = alpha
        self.beta = beta
        self.half = half
        groups = groups if groups is not None else layer_groups(model, head=head)
        targets = penalised_targets(model, groups, include=include, gammas=not half)
        self.extractor = [t for t in targets if t.group != HEAD]
        self.head = [t for t in targets if t.group == HEAD]
        self.reference = Reference(self.extractor)
        self._w0 = _flat([self.reference.weight(t.name) for t in self.extractor])
        self._importance = (
            None if importance is None else _importance(self.extractor, importance, self._w0)
        )

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        pretrained = self._term(self.distance, self.extractor, self._w0, self.reference)
        new = self._term(self.head_distance, self.head, None, None)
        return self.alpha * pretrained + self.beta * new

    def _term(
        self,
        distance: Distance,
        targets: Sequence[Target],
        w0: torch.Tensor | None,
        reference: Reference | None,
    ) -> torch.Tensor:
        if distance == "mars":
            return _mars(targets, reference)
        diff = _flat([t.param for t in targets])
        if w0 is not None:
            diff = diff - w0
        if distance == "l1":
            return diff.abs().sum()
        squares = diff.square()
        if w0 is not None and self._importance is not None:
            squares = squares * self._importance
        return (0.5 if self.half else 1.0) * squares.sum()


def _importance(
    targets: Sequence[Target], importance: Mapping[str, torch.Tensor], like: torch.Tensor
) -> torch.Tensor:
    """The importance weights of ``targets``, flattened in their order, on ``like``'s device."""
    parts = []
    for t in targets:
        weights = importance.get(t.name)
        if weights is None:
            raise ConfigError(f"the importance weights have no tensor for parameter {t.name!r}")
        if tuple(weights.shape) != tuple(t.param.shape):
            raise ConfigError(
                f"the importance weights of {t.name!r} have shape {list(weights.shape)}, "
                f"the parameter has {list(t.param.shape)}"
            )
        parts.append(weights.detach())
    return _flat(parts).to(device=like.device, dtype=like.dtype)


def _flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    if not tensors:
        return torch.zeros(0)
    return torch.cat([t.reshape(-1) for t in tensors])


def _mars(targets: Sequence[Target], reference: Reference | None) -> torch.Tensor:
    """``sum_tensors max_j ||W_j - W0_j||_1`` (``sum_i |g_i - g0_i|`` for gammas), batched."""
    terms: list[torch.Tensor] = []
    diagonal = [t for t in targets if t.kind != "matrix"]
    if diagonal:
        gammas = _flat([t.param for t in diagonal])
        if reference is not None:
            gammas = gammas - _flat([reference.weight(t.name) for t in diagonal])
        terms.append(gammas.abs().sum().reshape(1))
    by_length: dict[int, list[Target]] = {}
    for t in targets:
        if t.kind == "matrix":
            by_length.setdefault(t.param.numel() // t.n_rows, []).append(t)
    for members in by_length.values():
        rows = torch.cat([t.rows(t.param) for t in members])
        if reference is not None:
            rows = rows - torch.cat([t.rows(reference.weight(t.name)) for t in members])
        norms = rows.abs().sum(dim=1)
        owner = torch.repeat_interleave(
            torch.arange(len(members), device=norms.device),
            torch.tensor([t.n_rows for t in members], device=norms.device),
        )
        per_tensor = torch.zeros(len(members), device=norms.device, dtype=norms.dtype)
        terms.append(per_tensor.scatter_reduce(0, owner, norms, "amax", include_self=False))
    if not terms:
        return torch.zeros(())
    return torch.cat(terms).sum()


def penalised_targets(
    model: nn.Module, groups: LayerGroups, *, include: Include, gammas: bool
) -> list[Target]:
    """The tensors a :class:`DistancePenalty` acts on, pretrained ones and the head's.

    ``include="weights"``: conv, linear (and, with ``gammas``, norm-layer gamma) weights;
    ``"all"``: every parameter of the pretrained groups, and the head's weight.
    """
    if include == "weights":
        return [t for t in collect_targets(model, groups) if t.kind == "matrix" or gammas]
    owners = dict(model.named_modules())
    out: list[Target] = []
    for name, param in model.named_parameters():
        group = groups.group_of(name)
        if group is None or (group == HEAD and not name.endswith("weight")):
            continue
        owner, _, attr = name.rpartition(".")
        module = owners[owner]
        kind: Kind = "matrix" if param.dim() >= 2 else "diag"
        transposed = attr == "weight" and is_transposed_linear(module)
        out.append(Target(name, group, param, kind, module, transposed))
    return out
