"""Shared small models and an independent re-implementation of the distance rules.

The reference below is written from the MARS-PGM rules (Gouk, Hospedales, Pontil, ICLR 2021,
and their code's BatchNorm treatment), not from the package: rows are output units, BatchNorm gamma
goes through ``gamma / sqrt(var + 1e-6)`` with the *current* running variance, LayerNorm gamma is
element-wise, the head is measured from zero, biases and betas are free.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
import math
from typing import Literal

import pytest
import torch
from torch import nn

from tether.errors import ConfigError
from tether.finetune.layers import LayerGroups


BN_EPS = 1e-6
Kind = Literal["matrix", "bn", "diag"]


class TinyNet(nn.Module):
    """Conv+BN stem, a depthwise-separable body, a LayerNorm+Linear neck and an ``fc`` head."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.body = nn.Sequential(
            nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.Conv2d(6, 8, 1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
        )
        self.neck = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8), nn.ReLU())
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(self.stem(x)).mean((2, 3))
        return self.fc(self.neck(x))


TINY_GROUPS = LayerGroups(
    {"stem": ("stem",), "body": ("body",), "neck": ("neck",), "head": ("fc",)}
)


def tiny_net(seed: int = 0) -> TinyNet:
    """A TinyNet with non-trivial BatchNorm/LayerNorm gammas and running variances."""
    torch.manual_seed(seed)
    model = TinyNet()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d | nn.LayerNorm):
                shape = module.weight.shape
                module.weight.copy_(torch.rand(shape, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(shape, generator=gen) * 0.1)
            if isinstance(module, nn.BatchNorm2d):
                var = module.running_var
                assert var is not None
                var.copy_(torch.rand(var.shape, generator=gen) * 1.5 + 0.5)
    return model


def perturb_(model: nn.Module, scale: float, seed: int = 1) -> None:
    """Add ``scale * randn`` to every parameter (weights, biases, gammas, betas)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * scale)


def params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@dataclass(frozen=True)
class Ref:
    """One constrained tensor and my own snapshot of its pretrained value (float64)."""

    name: str
    group: str
    kind: Kind
    module: nn.Module
    param: nn.Parameter
    w0: torch.Tensor
    var0: torch.Tensor | None


def snapshot(model: nn.Module, groups: LayerGroups) -> list[Ref]:
    """The tensors the MARS rules constrain, with W0 (zero for the head) taken now."""
    out: list[Ref] = []
    for name, module in model.named_modules():
        group = groups.group_of(name)
        if group is None:
            continue
        kind: Kind
        if isinstance(module, nn.Conv2d | nn.Linear):
            kind = "matrix"
        elif isinstance(module, nn.BatchNorm2d):
            kind = "bn"
        elif isinstance(module, nn.LayerNorm):
            kind = "diag"
        else:
            continue
        if group == "head" and kind != "matrix":
            continue
        param = module.weight
        w0 = param.detach().to(torch.float64).clone()
        if group == "head":
            w0.zero_()
        var0 = None
        if kind == "bn":
            var = module.running_var
            assert isinstance(var, torch.Tensor)
            var0 = var.detach().to(torch.float64).clone()
        out.append(Ref(f"{name}.weight", group, kind, module, param, w0, var0))
    return out


def _current_var(ref: Ref) -> torch.Tensor:
    var = ref.module.running_var
    assert isinstance(var, torch.Tensor)
    return var.detach().to(torch.float64)


def offsets(ref: Ref) -> torch.Tensor:
    """``W - W0`` (matrices, rows first), ``d - d0`` (BatchNorm) or ``g - g0`` (LayerNorm)."""
    w = ref.param.detach().to(torch.float64)
    if ref.kind == "matrix":
        return (w - ref.w0).reshape(w.shape[0], -1)
    if ref.kind == "bn":
        assert ref.var0 is not None
        return w / (_current_var(ref) + BN_EPS).sqrt() - ref.w0 / (ref.var0 + BN_EPS).sqrt()
    return (w - ref.w0).reshape(-1)


def reference_sizes(ref: Ref, norm: str) -> torch.Tensor:
    """The pretrained size a relative radius multiplies: per row, tensor or channel."""
    if ref.kind == "matrix":
        rows = ref.w0.reshape(ref.w0.shape[0], -1)
        return rows.abs().sum(1) if norm == "mars" else rows.norm().reshape(1)
    if ref.kind == "bn":
        assert ref.var0 is not None
        return (ref.w0 / (ref.var0 + BN_EPS).sqrt()).abs()
    return ref.w0.reshape(-1).abs()


def distances(ref: Ref, norm: str) -> torch.Tensor:
    """Per-row (mars), per-tensor (frob) or per-element (norm layers) distances."""
    t = offsets(ref)
    if ref.kind != "matrix":
        return t.abs()
    return t.abs().sum(1) if norm == "mars" else t.norm().reshape(1)


def radii(ref: Ref, norm: str, group_radius: Mapping[str, float], relative: bool) -> torch.Tensor:
    """The radius of every row of ``ref`` (relative radii scale with the pretrained size)."""
    r = group_radius[ref.group]
    sizes = reference_sizes(ref, norm)
    if relative and ref.group != "head":
        return r * sizes
    return torch.full_like(sizes, r)


def group_maxima(refs: list[Ref], norm: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for ref in refs:
        value = float(distances(ref, norm).max())
        out[ref.group] = max(out.get(ref.group, -math.inf), value)
    return out


def config_error(fn: Callable[[], object], kind: str = "model") -> str:
    """The message of the :class:`ConfigError` of ``kind`` that ``fn()`` raises: one line."""
    with pytest.raises(ConfigError) as info:
        fn()
    assert info.value.kind == kind
    message = str(info.value)
    assert "\n" not in message
    return message
