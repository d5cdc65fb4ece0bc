"""The projection engine's internals: chunking, packing and the fast paths agree with a loop.

``ProjectionPlan`` cuts blocks into CPU chunks, projects large tensors in place by row slices,
packs small ones together and skips chunks with nothing outside. Whatever the chunk size and
memory format, the result must equal a plain per-tensor loop.
"""

from __future__ import annotations

import math
from typing import Literal

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from tether.finetune.layers import layer_groups
from tether.finetune.regularizers import DistanceConstraint
from tether.finetune.regularizers._l1ball import project_rows_l1
from tether.finetune.regularizers._plan import _chunks
from tether.finetune.regularizers._targets import BN_EPS
from tether.finetune.regularizers._targets import Target
from tether.finetune.regularizers._targets import collect_targets


Norm = Literal["mars", "frob"]
ATOL = 1e-6
RADIUS = 0.05
HEAD_RADIUS = 0.5


def _model(*, channels_last: bool = False) -> nn.Module:
    torch.manual_seed(0)
    model = resnet18(num_classes=10)
    with torch.no_grad():
        for module, var in _batch_norms(model):
            module.weight.uniform_(0.5, 1.5)
            var.uniform_(0.5, 2.0)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _batch_norms(model: nn.Module) -> list[tuple[nn.BatchNorm2d, torch.Tensor]]:
    return [
        (m, m.running_var)
        for m in model.modules()
        if isinstance(m, nn.BatchNorm2d) and isinstance(m.running_var, torch.Tensor)
    ]


def _perturb_(model: nn.Module, seed: int) -> None:
    """Move every weight by noise of a per-row scale, so some rows end inside, some outside."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("weight"):
                continue
            rows = p.shape[0]
            scale = torch.rand(rows, generator=gen) ** 3 * 4e-3
            noise = torch.randn(p.shape, generator=gen) * scale.view(-1, *[1] * (p.dim() - 1))
            p.add_(noise)
        for _, var in _batch_norms(model):
            var.mul_(1 + 0.1 * torch.rand(var.shape, generator=gen))


def _loop_project(
    targets: list[Target],
    w0: dict[str, torch.Tensor],
    var0: dict[str, torch.Tensor],
    radii: dict[str, float],
    *,
    norm: Norm,
    exact: bool,
    relative: bool,
) -> None:
    """The rules, one tensor at a time (the reference code's loop)."""
    for target in targets:
        p = target.param.detach()
        r = radii[target.group]
        if target.kind == "matrix":
            ref = torch.zeros_like(p) if target.group == "head" else w0[target.name]
            rows = p.reshape(1 if norm == "frob" else p.shape[0], -1)
            t = rows - ref.reshape(rows.shape)
            ref_rows = ref.reshape(rows.shape)
            if norm == "mars":
                n, n0 = t.abs().sum(1), ref_rows.abs().sum(1)
            else:
                n, n0 = t.norm(dim=1), ref_rows.norm(dim=1)
            radius = torch.full_like(n, r)
            if relative and target.group != "head":
                radius = radius * n0
            if exact and norm == "mars":
                new = project_rows_l1(t, radius)
            else:
                factor = torch.where(n > radius, radius / n, torch.ones_like(n))
                new = t * factor.unsqueeze(1)
            p.copy_((ref_rows + new).view_as(p))
        else:
            var = target.running_var()
            scale = torch.ones_like(p) if var is None else torch.sqrt(var + BN_EPS)
            scale0 = torch.ones_like(p) if var is None else torch.sqrt(var0[target.name] + BN_EPS)
            d0 = w0[target.name] / scale0
            radius = r * d0.abs() if relative else torch.full_like(d0, r)
            d = p / scale
            p.copy_((d0 + torch.clamp(d - d0, -radius, radius)) * scale)


CASES = [  # (norm, exact, relative, chunk): every rule at the default chunk, then chunkings
    *[(n, e, r, None) for n in ("mars", "frob") for e in (False, True) for r in (False, True)],
    *[("mars", False, r, c) for r in (False, True) for c in (0, 5000)],
    ("mars", True, False, 5000),
    ("frob", False, False, 5000),
]


@pytest.mark.slow
@pytest.mark.parametrize(("norm", "exact", "relative", "chunk"), CASES)
def test_plan_matches_the_per_tensor_loop(
    norm: Norm, exact: bool, relative: bool, chunk: int | None
) -> None:
    model = _model()
    groups = layer_groups(model, head="fc")
    radius = RADIUS if not relative else (0.02 if norm == "mars" else 0.01)
    constraint = DistanceConstraint(
        model,
        norm=norm,
        radius={g: (math.inf if g == "layer1" else radius) for g in groups.extractor},
        head_radius=HEAD_RADIUS,
        head="fc",
        mode="exact" if exact else "rescale",
        relative=relative,
        chunk=chunk,
    )
    targets = collect_targets(model, groups)
    w0 = {t.name: t.param.detach().clone() for t in targets}
    var0 = {t.name: v.clone() for t in targets if (v := t.running_var()) is not None}
    _perturb_(model, 0)
    start = [t.param.detach().clone() for t in targets]
    constraint.project_()
    ours = [t.param.detach().clone() for t in targets]
    with torch.no_grad():
        for t, s in zip(targets, start, strict=True):
            t.param.copy_(s)
    _loop_project(targets, w0, var0, constraint.radii, norm=norm, exact=exact, relative=relative)
    moved = 0
    for t, a, s in zip(targets, ours, start, strict=True):
        torch.testing.assert_close(a, t.param.detach(), atol=ATOL, rtol=0, msg=t.name)
        moved += int((a != s).any())
    assert moved > 10  # the radii are tight enough that projection does real work


def test_channels_last_weights_project_like_contiguous_ones() -> None:
    a, b = _model(), _model(channels_last=True)
    constraints = [
        DistanceConstraint(m, norm="mars", radius=RADIUS, head_radius=HEAD_RADIUS, head="fc")
        for m in (a, b)
    ]
    for model, constraint in zip((a, b), constraints, strict=True):
        _perturb_(model, 0)
        constraint.project_()
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=ATOL, rtol=0, msg=name)


def test_a_layout_change_after_construction_is_followed() -> None:
    """W0 must follow the weights into channels_last, or rows would pair the wrong elements."""
    a, b = _model(), _model()
    before = DistanceConstraint(a, norm="mars", radius=RADIUS, head_radius=HEAD_RADIUS, head="fc")
    a.to(memory_format=torch.channels_last)
    b.to(memory_format=torch.channels_last)
    after = DistanceConstraint(b, norm="mars", radius=RADIUS, head_radius=HEAD_RADIUS, head="fc")
    for model, constraint in ((a, before), (b, after)):
        _perturb_(model, 0)
        constraint.project_()
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=ATOL, rtol=0, msg=name)


def test_a_parameter_whose_storage_was_replaced_is_still_projected() -> None:
    model = _model()
    constraint = DistanceConstraint(
        model, norm="mars", radius=RADIUS, head_radius=HEAD_RADIUS, head="fc"
    )
    weight = model.get_parameter("layer4.1.conv2.weight")
    weight.data = weight.data.clone()  # e.g. a later .to() or load into fresh storage
    _perturb_(model, 0)
    constraint.project_()
    assert constraint.distances()["layer4"] <= RADIUS * (1 + 1e-5)


def test_rows_inside_their_ball_are_left_bit_for_bit() -> None:
    model = _model()
    constraint = DistanceConstraint(
        model, norm="mars", radius=RADIUS, head_radius=HEAD_RADIUS, head="fc"
    )
    _perturb_(model, 1)
    weight = model.get_parameter("layer3.0.conv1.weight")
    before = weight.detach().clone()
    row_norms = (
        (before - constraint.reference.weight("layer3.0.conv1.weight")).abs().sum((1, 2, 3))
    )
    constraint.project_()
    inside = row_norms <= RADIUS
    assert 0 < int(inside.sum()) < inside.numel()
    assert torch.equal(weight.detach()[inside], before[inside])


def test_a_zero_reference_row_with_a_relative_radius_stays_finite() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    weight = model.get_parameter("0.weight")
    with torch.no_grad():
        weight[1].zero_()
    groups = layer_groups(model, head="1")
    constraint = DistanceConstraint(
        model, norm="mars", radius=0.5, head_radius=1.0, head="1", relative=True
    )
    assert groups.names[-1] == "head"
    constraint.project_()  # row 1 has radius 0 and offset 0: 0 / 0 must not become NaN
    assert torch.isfinite(weight).all()
    with torch.no_grad():
        weight[1].fill_(0.3)
    constraint.project_()
    assert torch.equal(weight[1], torch.zeros(4))


@pytest.mark.parametrize("limit", [1, 64, 1000, 5000, 1 << 40])
def test_chunks_cover_every_row_once_and_never_split_a_tensor_beside_another(limit: int) -> None:
    model = _model()
    targets = [
        t for t in collect_targets(model, layer_groups(model, head="fc")) if t.kind == "matrix"
    ]
    by_length: dict[int, list[Target]] = {}
    for t in targets:
        by_length.setdefault(t.param[0].numel(), []).append(t)
    for length, members in by_length.items():
        chunks = _chunks(members, length, limit, whole=False)
        covered = {t.name: torch.zeros(t.param.shape[0], dtype=torch.long) for t in members}
        for chunk in chunks:
            rows = sum(s.stop - s.start for s in chunk)
            assert rows * length <= max(limit, length)
            if len(chunk) > 1:  # packed: whole tensors only
                assert all(s.start == 0 and s.stop == s.target.param.shape[0] for s in chunk)
            for s in chunk:
                covered[s.target.name][s.start : s.stop] += 1
        assert all(bool((c == 1).all()) for c in covered.values())


def test_a_huge_chunk_allocates_no_more_than_the_largest_block() -> None:
    model = _model()
    constraint = DistanceConstraint(
        model, norm="mars", radius=RADIUS, head_radius=HEAD_RADIUS, head="fc", chunk=1 << 40
    )
    _perturb_(model, 0)
    constraint.project_()
    assert constraint.distances()["layer4"] <= RADIUS * (1 + 1e-5)
