"""Starting-point penalties: L2-SP, and the penalty forms of the MARS and Frobenius distances."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from finetune.errors import ConfigError
from finetune.layers import HEAD
from finetune.layers import LayerGroups
from finetune.layers import layer_groups
from finetune.regularizers._base import BasePenalty
from finetune.regularizers._reference import Reference
from finetune.regularizers._targets import Target
from finetune.regularizers._targets import collect_targets
from finetune.regularizers._targets import row_view


Distance = Literal["squared", "mars"]
Include = Literal["weights", "all"]


class DistancePenalty(BasePenalty):
    """``alpha * sum_layers d(W, W0) + beta * d(W_head, 0)``: a distance as a loss term.

    Three published forms are presets of this one class (see the registry):

    * ``l2-sp`` (Li, Grandvalet, Davoine, ICML 2018):
      ``alpha/2 ||w_S - w0_S||^2 + beta/2 ||w_head||^2`` over the conv and linear weights
      (``include="weights"``, the authors' code) or every pretrained parameter (``"all"``);
    * ``frob-sp`` (MARS code's "penalty, frob"): the same without the halves, BatchNorm and
      LayerNorm gamma included as plain tensors;
    * ``mars-sp`` (Gouk et al. 2021): ``alpha * sum_layers max_j ||W_j - W0_j||_1`` plus
      ``beta * max_j ||W_head,j||_1`` (not squared), gammas as ``sum_i |g_i - g0_i|``.

    Args:
        model: the network, its current weights taken as W0.
        head: dotted name of the new head (measured from zero).
        distance: ``"squared"`` (sum of squares) or ``"mars"`` (max absolute row sum).
        alpha: weight of the pretrained layers' term.
        beta: weight of the head's term.
        half: multiply both terms by 1/2 (L2-SP's convention).
        include: ``"weights"`` (conv, linear and, unless ``half``, norm-layer gammas) or
            ``"all"`` (every parameter of the pretrained groups, biases included).
        groups: layer groups; by default :func:`finetune.layers.layer_groups`.

    Example:
        >>> from torchvision.models import resnet18
        >>> model = resnet18(num_classes=3)
        >>> penalty = DistancePenalty(model, head="fc", distance="squared", alpha=0.1, beta=0.01)
        >>> float(penalty(torch.zeros(1)))  # at W0 only the head term is left
        > 0
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
    ) -> None:
        for key, value in (("alpha", alpha), ("beta", beta)):
            if not value >= 0:
                raise ConfigError(f"penalty.{key} must be >= 0, got {value!r}")
        if include not in ("weights", "all"):
            raise ConfigError(f"penalty.include must be 'weights' or 'all', got {include!r}")
        self.distance = distance
        self.alpha = alpha
        self.beta = beta
        self.scale = 0.5 if half else 1.0
        groups = groups if groups is not None else layer_groups(model, head=head)
        targets = _penalised(model, groups, include=include, gammas=not half)
        self.extractor = [t for t in targets if t.group != HEAD]
        self.head = [t for t in targets if t.group == HEAD]
        self.reference = Reference(self.extractor)
        self._w0 = _flat([self.reference.weight(t.name) for t in self.extractor])

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.distance == "squared":
            pretrained = (_flat([t.param for t in self.extractor]) - self._w0).square().sum()
            new = _flat([t.param for t in self.head]).square().sum()
        else:
            pretrained = _mars(self.extractor, self.reference)
            new = _mars(self.head, None)
        return self.scale * (self.alpha * pretrained + self.beta * new)


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
            by_length.setdefault(t.param.numel() // t.param.shape[0], []).append(t)
    for members in by_length.values():
        rows = torch.cat([row_view(t.param, whole=False) for t in members])
        if reference is not None:
            rows = rows - torch.cat(
                [row_view(reference.weight(t.name), whole=False) for t in members]
            )
        norms = rows.abs().sum(dim=1)
        owner = torch.repeat_interleave(
            torch.arange(len(members), device=norms.device),
            torch.tensor([t.param.shape[0] for t in members], device=norms.device),
        )
        per_tensor = torch.zeros(len(members), device=norms.device, dtype=norms.dtype)
        terms.append(per_tensor.scatter_reduce(0, owner, norms, "amax", include_self=False))
    if not terms:
        return torch.zeros(())
    return torch.cat(terms).sum()


def _penalised(
    model: nn.Module, groups: LayerGroups, *, include: Include, gammas: bool
) -> list[Target]:
    if include == "weights":
        return [t for t in collect_targets(model, groups) if t.kind == "matrix" or gammas]
    owners = dict(model.named_modules())
    out: list[Target] = []
    for name, param in model.named_parameters():
        group = groups.group_of(name)
        if group is None or (group == HEAD and not name.endswith("weight")):
            continue
        module = owners[name.rpartition(".")[0]]
        out.append(Target(name, group, param, "matrix" if param.dim() >= 2 else "diag", module))
    return out
