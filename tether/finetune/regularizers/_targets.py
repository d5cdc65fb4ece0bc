"""Which tensors a distance regulariser acts on, and how each is read as rows.

Rules, following the MARS reference code (Gouk et al. 2021) and its PyTorch port (RSL):

* the ``weight`` of every convolution and linear layer (and the input projection of
  ``nn.MultiheadAttention``) is a matrix whose rows are the output units: a conv weight
  ``[out, in, kh, kw]`` has ``out`` rows of ``in * kh * kw`` entries (depthwise convs
  therefore get one row per channel, the exact l-inf operator norm);
* transformers' ``Conv1D`` (GPT-2's linear layer, ``y = x @ W + b``) stores its weight
  transposed, ``[in, out]``: its rows are the *columns* of the stored tensor
  (:attr:`Target.transposed`), so that it is measured exactly as the ``nn.Linear`` with
  weight ``W.T``;
* BatchNorm's gamma enters through the diagonal of its inference map,
  ``d = gamma / sqrt(running_var + 1e-6)``, element-wise; LayerNorm / GroupNorm / RMSNorm
  gamma element-wise as is;
* biases, BatchNorm beta, class tokens and position embeddings stay free;
* the new head is measured from zero.

Any other parameter (an ``nn.Embedding``, a custom module's) is left free too, and
:func:`unknown_free` names it, so that a constraint can say so.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from tether.finetune.layers import HEAD
from tether.finetune.layers import LayerGroups


Kind = Literal["matrix", "bn", "diag"]

# The reference code's epsilon for the BatchNorm diagonal (not the layer's own eps).
BN_EPS = 1e-6


@dataclass(frozen=True)
class Target:
    """One constrained tensor.

    ``transposed``: a matrix stored ``[in, out]`` (transformers' ``Conv1D``), whose output
    units, and so whose rows, are the stored tensor's columns.
    """

    name: str
    group: str
    param: nn.Parameter
    kind: Kind
    module: nn.Module
    transposed: bool = False

    @property
    def n_rows(self) -> int:
        """How many rows (output units) the tensor has."""
        return self.param.shape[-1] if self.transposed else self.param.shape[0]

    def rows(self, tensor: torch.Tensor, *, whole: bool = False) -> torch.Tensor:
        """``tensor`` (the parameter, or one shaped like it) read as this target's rows."""
        return row_view(tensor, whole=whole, transposed=self.transposed)

    def running_var(self) -> torch.Tensor | None:
        """The live running variance of a BatchNorm target (it changes during training)."""
        if self.kind != "bn":
            return None
        var = self.module.running_var
        return var if isinstance(var, torch.Tensor) else None


def row_view(tensor: torch.Tensor, *, whole: bool, transposed: bool = False) -> torch.Tensor:
    """A copy-free ``[rows, length]`` view: one row per output unit, or one row in all.

    Channels-last conv weights are contiguous in ``[out, kh, kw, in]`` order, so their rows
    are still contiguous blocks (the order inside a row does not matter to a row norm). A
    ``transposed`` matrix ``[in, out]`` is read as ``tensor.T``, its columns as rows: a
    strided view, which element-wise ops and ``out=`` arguments take as they are (``view``
    does not).

    Example:
        >>> w = torch.arange(6.0).view(2, 3)  # [in, out] = [2, 3]
        >>> row_view(w, whole=False, transposed=True).abs().sum(dim=1)
        tensor([3., 5., 7.])
    """
    if transposed and not whole:
        if tensor.dim() != 2:
            raise ValueError(f"a transposed weight is a matrix, got shape {list(tensor.shape)}")
        return tensor.T
    rows = 1 if whole else tensor.shape[0]
    if tensor.is_contiguous():
        return tensor.view(rows, -1)
    if tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last):
        return tensor.permute(0, 2, 3, 1).view(rows, -1)
    raise ValueError(
        f"cannot take a copy-free row view of a tensor with strides {tensor.stride()}"
    )


_MATRIX_MODULES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM_MODULES: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
DELIBERATELY_FREE = (
    "class_token",
    "cls_token",
    "pos_embedding",
    "pos_embed",
    "position_embeddings",
)
"""Last parts of parameter names left free by the rules above (torchvision's, timm's and
transformers' class tokens and position embeddings),
besides every name ending in ``bias`` (``in_proj_bias`` too)."""


def is_transposed_linear(module: nn.Module) -> bool:
    """Whether ``module`` is a linear layer with its weight stored ``[in, out]``.

    transformers' ``Conv1D`` (GPT-2, GPT, ...), recognised without importing transformers: a
    class named ``Conv1D`` whose 2-D ``weight`` has ``nf`` (its output width) columns.
    """
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__ == "Conv1D"
        and isinstance(weight, torch.Tensor)
        and weight.dim() == 2
        and getattr(module, "nf", None) == weight.shape[1]
    )


def _module_targets(module: nn.Module) -> Iterator[tuple[str, Kind]]:
    if isinstance(module, _MATRIX_MODULES) or is_transposed_linear(module):
        yield "weight", "matrix"
    elif isinstance(module, nn.MultiheadAttention):
        for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
            if getattr(module, name, None) is not None:
                yield name, "matrix"
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        if module.affine:
            yield "weight", "bn" if module.track_running_stats else "diag"
    elif isinstance(module, _NORM_MODULES) and getattr(module, "weight", None) is not None:
        yield "weight", "diag"


def collect_targets(model: nn.Module, groups: LayerGroups) -> list[Target]:
    """Every constrained tensor of ``model`` with its group, in model order.

    Tensors outside every group, and tensors the head module does not own directly as a
    weight matrix, are left free.
    """
    targets: list[Target] = []
    for module_name, module in model.named_modules():
        group = groups.group_of(module_name)
        if group is None:
            continue
        for attr, kind in _module_targets(module):
            if group == HEAD and kind != "matrix":
                continue
            param = getattr(module, attr)
            if isinstance(param, nn.Parameter):
                name = f"{module_name}.{attr}" if module_name else attr
                transposed = attr == "weight" and is_transposed_linear(module)
                targets.append(Target(name, group, param, kind, module, transposed))
    return targets


def unknown_free(
    model: nn.Module, targets: list[Target], *, free: tuple[str, ...] = ()
) -> tuple[list[str], float]:
    """The trainable parameters no rule covers, and their share of all parameters.

    Constrained tensors, biases, shifts, class tokens and position embeddings are left out,
    and so is every name in ``free`` or under a module named there (what the user leaves free
    knowingly).

    Raises:
        ConfigError: a name in ``free`` is no parameter or module of ``model``.
    """
    from tether.errors import ConfigError

    names = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_modules()}
    unknown = [n for n in free if n not in names]
    if unknown:
        raise ConfigError(f"free names no parameter or module {unknown[0]!r} of the model")
    constrained = {id(t.param) for t in targets}
    total = sum(p.numel() for p in model.parameters()) or 1
    left: list[str] = []
    size = 0
    for name, param in model.named_parameters():
        last = name.rsplit(".", 1)[-1]
        chosen = any(name == f or name.startswith(f + ".") for f in free)
        deliberate = last.endswith("bias") or last in DELIBERATELY_FREE
        if id(param) in constrained or deliberate or chosen:
            continue
        if param.requires_grad:
            left.append(name)
            size += param.numel()
    return left, size / total
