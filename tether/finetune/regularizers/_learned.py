"""What the learned-radius methods constrain, and their radii in a MARS-PGM's units.

Two conventions choose the tensors (``constraint.tensors``):

* ``reference`` (FTP's and TPGM's released code): every trainable parameter except the new
  head's, weights by output rows, 1-D tensors (biases, normalisation scales and shifts) each
  as one whole-tensor row;
* ``tether`` (Tether's fixed-radius constraint): convolution and linear weights by rows,
  BatchNorm scales element-wise through their inference diagonal
  ``gamma / sqrt(running_var + 1e-6)`` (the running variance read afresh at every step),
  LayerNorm and GroupNorm scales element-wise, biases and shifts free.

Under both, a weight stored transposed (transformers' ``Conv1D``, ``[in, out]``) is read by its
columns, its output units (layout ``columns``), as the fixed-radius constraint reads it.

The head is found by identity (the parameters of the head module), so a wrapper that prefixes
every name (``module.`` of DistributedDataParallel) cannot make it constrained.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from tether.finetune.layers import HEAD
from tether.finetune.layers import LayerGroups
from tether.finetune.layers import unwrap
from tether.finetune.regularizers._rowset import Layout
from tether.finetune.regularizers._rowset import Multiplier
from tether.finetune.regularizers._rowset import RowSet
from tether.finetune.regularizers._targets import BN_EPS
from tether.finetune.regularizers._targets import Target
from tether.finetune.regularizers._targets import collect_targets
from tether.finetune.regularizers._targets import is_transposed_linear


Convention = Literal["reference", "tether"]


@dataclass(frozen=True)
class Constrained:
    """One tensor whose radius is learned: the parameter, how it is read, its group, and the
    factor to the value constrained (BatchNorm's diagonal), if any."""

    param: nn.Parameter
    layout: Layout
    group: str
    multiplier: Multiplier | None = None


def constrained_tensors(
    model: nn.Module, groups: LayerGroups, *, head: str, convention: Convention = "reference"
) -> list[Constrained]:
    """The tensors a learned-radius method constrains in ``model`` (see the module docstring);
    a DataParallel, DistributedDataParallel or ``torch.compile`` wrapper is looked through."""
    model = unwrap(model)
    if convention == "tether":
        return [
            Constrained(t.param, _layout(t), t.group, _diagonal(t))
            for t in collect_targets(model, groups)
            if t.group != HEAD
        ]
    skip = {id(p) for p in model.get_submodule(head).parameters()}
    transposed = {id(m.weight) for m in model.modules() if is_transposed_linear(m)}
    out = []
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in skip:
            continue
        layout: Layout = "rows" if param.dim() >= 2 else "whole"
        if id(param) in transposed:
            layout = "columns"
        out.append(Constrained(param, layout, groups.group_of(name) or groups.extractor[0]))
    return out


def _layout(target: Target) -> Layout:
    if target.kind != "matrix":
        return "elements"
    return "columns" if target.transposed else "rows"


def _diagonal(target: Target) -> Multiplier | None:
    """BatchNorm's ``1 / sqrt(running_var + eps)``, from the live running variance."""
    if target.kind != "bn":
        return None

    def multiplier() -> torch.Tensor:
        var = target.running_var()
        assert var is not None, "a BatchNorm target tracks its running variance"
        return torch.rsqrt(var + BN_EPS)

    return multiplier


def group_radii(
    rows: RowSet, radii: torch.Tensor, groups: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Each group's learned radius, absolute and relative, as one MARS-PGM group radius.

    A group's radius is the largest learned radius of its tensors measured as a MARS-PGM
    measures them (rows and elements; a whole-tensor l1 row, the reference's rule for a 1-D
    tensor, is in other units and counts only when the group has nothing else): the smallest
    single radius that holds every tensor of the group where the learned radii put it.
    Relative: each tensor's radius divided by the mean l1 norm of its pretrained rows (the
    unit of a ``relative`` constraint), the largest in the group.

    Returns:
        ``{"absolute": {group: radius}, "relative": {group: radius}}``.
    """
    scale = rows.tensor_sum([b.anchor.abs().sum(dim=1) for b in rows.blocks])
    counts = rows.tensor_sum([torch.ones_like(b.anchor[:, 0]) for b in rows.blocks])
    mean_norm = (scale / counts.to(scale.dtype)).tolist()
    values = radii.tolist()
    absolute: dict[str, float] = {}
    relative: dict[str, float] = {}
    for group in dict.fromkeys(groups):
        members = [i for i, g in enumerate(groups) if g == group]
        by_rows = [i for i in members if rows.layouts[i] != "whole"] or members
        absolute[group] = max(values[i] for i in by_rows)
        relative[group] = max(values[i] / max(mean_norm[i], 1e-12) for i in by_rows)
    return {"absolute": absolute, "relative": relative}
