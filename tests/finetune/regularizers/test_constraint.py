"""Conformance suite for the projections (MARS-PGM, l2-PGM), checked against tests' own math."""

from __future__ import annotations

import copy
import inspect
import math
from typing import Any
from typing import Literal

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from tests.finetune.conftest import BN_EPS
from tests.finetune.conftest import TINY_GROUPS
from tests.finetune.conftest import Ref
from tests.finetune.conftest import distances
from tests.finetune.conftest import group_maxima
from tests.finetune.conftest import offsets
from tests.finetune.conftest import params
from tests.finetune.conftest import perturb_
from tests.finetune.conftest import radii
from tests.finetune.conftest import snapshot
from tests.finetune.conftest import tiny_net
from tether.errors import ConfigError
from tether.finetune.layers import LayerGroups
from tether.finetune.layers import geometric_radii
from tether.finetune.layers import layer_groups
from tether.finetune.models.digits_cnn import DigitsCNN
from tether.finetune.regularizers import ConstraintConfig
from tether.finetune.regularizers import DistanceConstraint
from tether.finetune.regularizers import NoConstraint
from tether.finetune.regularizers import build_constraint


Norm = Literal["mars", "frob"]
Mode = Literal["rescale", "exact"]
NORMS: tuple[Norm, ...] = ("mars", "frob")
MODES: tuple[Mode, ...] = ("rescale", "exact")
RADII = ("float", "dict", "geometric")
HEAD_RADIUS = 2.0
RTOL = 1e-4
ATOL = 1e-6

norm_param = pytest.mark.parametrize("norm", NORMS)
mode_param = pytest.mark.parametrize("mode", MODES)
relative_param = pytest.mark.parametrize("relative", [False, True])


def _radius(kind: str, groups: LayerGroups, relative: bool) -> float | dict[str, float]:
    unit = 0.3 if relative else 1.0
    if kind == "float":
        return 0.5 * unit
    if kind == "dict":
        return {g: unit * (0.2 + 0.4 * i) for i, g in enumerate(groups.extractor)}
    return geometric_radii(groups.extractor, base=0.2 * unit, scale=2.0)


def _as_dict(radius: float | dict[str, float], groups: LayerGroups) -> dict[str, float]:
    out = dict(radius) if isinstance(radius, dict) else dict.fromkeys(groups.extractor, radius)
    return {**out, "head": HEAD_RADIUS}


def _constraint(
    model: nn.Module, norm: Norm, radius: float | dict[str, float], **kwargs: Any
) -> DistanceConstraint:
    kwargs.setdefault("groups", TINY_GROUPS)
    return DistanceConstraint(
        model, norm=norm, radius=radius, head_radius=HEAD_RADIUS, head="fc", **kwargs
    )


def _assert_inside(
    refs: list[Ref], norm: Norm, group_radius: dict[str, float], relative: bool
) -> None:
    for ref in refs:
        dist = distances(ref, norm)
        limit = radii(ref, norm, group_radius, relative)
        excess = dist - limit * (1 + RTOL) - ATOL
        assert float(excess.max()) <= 0, (ref.name, dist, limit)


# ------------------------------------------------------------------- conformance suite


@norm_param
@mode_param
@relative_param
@pytest.mark.parametrize("radius_kind", RADII)
def test_every_row_is_inside_its_radius_after_projection(
    norm: Norm, mode: Mode, relative: bool, radius_kind: str
) -> None:
    model = tiny_net()
    refs = snapshot(model, TINY_GROUPS)
    radius = _radius(radius_kind, TINY_GROUPS, relative)
    constraint = _constraint(model, norm, radius, mode=mode, relative=relative)
    perturb_(model, 1.0)
    group_radius = _as_dict(radius, TINY_GROUPS)
    before = {ref.name: distances(ref, norm) for ref in refs}
    # the perturbation must push rows outside, or the test proves nothing
    assert all(
        bool((before[ref.name] > radii(ref, norm, group_radius, relative)).any()) for ref in refs
    )
    constraint.project_()
    _assert_inside(refs, norm, group_radius, relative)
    reported = constraint.distances()
    expected = group_maxima(refs, norm)
    assert set(reported) == set(TINY_GROUPS.names)
    for group, value in expected.items():
        assert reported[group] == pytest.approx(value, rel=1e-5, abs=1e-6)
        if not relative:
            assert reported[group] <= group_radius[group] * (1 + RTOL) + ATOL


@norm_param
@mode_param
@relative_param
@pytest.mark.parametrize("radius_kind", RADII)
def test_projection_is_idempotent(
    norm: Norm, mode: Mode, relative: bool, radius_kind: str
) -> None:
    model = tiny_net()
    constraint = _constraint(
        model, norm, _radius(radius_kind, TINY_GROUPS, relative), mode=mode, relative=relative
    )
    perturb_(model, 1.0)
    constraint.project_()
    once = params(model)
    constraint.project_()
    for name, value in model.named_parameters():
        torch.testing.assert_close(value.detach(), once[name], rtol=1e-6, atol=1e-6)


@norm_param
@mode_param
@relative_param
def test_matrices_inside_the_ball_are_untouched_bit_for_bit(
    norm: Norm, mode: Mode, relative: bool
) -> None:
    model = tiny_net()
    with torch.no_grad():
        model.fc.weight.mul_(0.25)  # the head is measured from zero: put it inside too
    constraint = _constraint(model, norm, 0.5, mode=mode, relative=relative)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                module.weight.mul_(1.0 + 1e-3)
    before = params(model)
    constraint.project_()
    for ref in snapshot(model, TINY_GROUPS):
        if ref.kind == "matrix":
            assert torch.equal(ref.param.detach(), before[ref.name]), ref.name


@norm_param
def test_norm_gammas_inside_the_ball_are_untouched_bit_for_bit(norm: Norm) -> None:
    """Gammas inside their ball (or in a free group) are not rewritten, not even by one ulp."""
    model = tiny_net()
    at_w0 = DistanceConstraint(
        model, norm=norm, radius=0.5, head_radius=100.0, head="fc", groups=TINY_GROUPS
    )
    before = params(model)
    at_w0.project_()
    changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert changed == []
    free = DistanceConstraint(
        model, norm=norm, radius=math.inf, head_radius=math.inf, head="fc", groups=TINY_GROUPS
    )
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d | nn.LayerNorm):
                module.weight.mul_(1.01)
    before = params(model)
    free.project_()
    changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert changed == []


@norm_param
@mode_param
@relative_param
def test_biases_betas_and_running_stats_are_never_modified(
    norm: Norm, mode: Mode, relative: bool
) -> None:
    model = tiny_net()
    constraint = _constraint(model, norm, 0.1, mode=mode, relative=relative)
    perturb_(model, 1.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    constraint.project_()
    after = model.state_dict()
    free = [k for k in before if not k.endswith("weight")]
    assert any(k.endswith("bias") for k in free)
    assert any(k.endswith("running_var") for k in free)
    for key in free:
        assert torch.equal(after[key], before[key]), key


@norm_param
@mode_param
@relative_param
def test_head_is_measured_from_zero(norm: Norm, mode: Mode, relative: bool) -> None:
    model = tiny_net()
    constraint = _constraint(model, norm, 0.3, mode=mode, relative=relative)
    with torch.no_grad():
        model.fc.weight.copy_(torch.randn(3, 8, generator=torch.Generator().manual_seed(3)) * 50)
        model.fc.weight[1] = 1e-3  # row l1 = 8e-3: inside the ball around zero
    big = model.fc.weight.detach().clone()
    constraint.project_()
    head = model.fc.weight.detach().double()
    if norm == "mars":
        rows = head.abs().sum(1)
        assert float(rows.max()) == pytest.approx(HEAD_RADIUS, rel=1e-5)
        assert torch.equal(model.fc.weight[1].detach(), big[1])
        assert rows[0] == pytest.approx(HEAD_RADIUS, rel=1e-5)
        assert rows[2] == pytest.approx(HEAD_RADIUS, rel=1e-5)
    else:
        assert float(head.norm()) == pytest.approx(HEAD_RADIUS, rel=1e-5)
    if mode == "rescale" or norm == "frob":
        # radially toward zero: every row (tensor) is a positive multiple of what it was
        scale = (head * big.double()).sum(1) / big.double().square().sum(1)
        torch.testing.assert_close(head, scale[:, None] * big.double(), rtol=1e-5, atol=1e-6)
        assert bool((scale > 0).all())
        assert bool((scale <= 1 + 1e-6).all())
    assert constraint.distances()["head"] == pytest.approx(HEAD_RADIUS, rel=1e-5)


@norm_param
def test_outside_rows_are_rescaled_radially_toward_w0_inside_rows_kept(norm: Norm) -> None:
    model = tiny_net()
    w0 = params(model)
    constraint = _constraint(model, norm, 0.5, mode="rescale")
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        # mars: even rows far outside, odd rows barely moved; frob: stem conv far, neck close
        conv = model.get_parameter("stem.0.weight")
        for j in range(conv.shape[0]):
            size = 1.0 if (j % 2 == 0 or norm == "frob") else 1e-4
            conv[j].add_(torch.randn(conv[j].shape, generator=gen) * size)
        linear = model.get_parameter("neck.1.weight")
        linear.add_(torch.randn(linear.shape, generator=gen) * 1e-4)
    moved = params(model)
    constraint.project_()
    for name in ("stem.0.weight", "neck.1.weight"):
        t_before = (moved[name] - w0[name]).double().reshape(moved[name].shape[0], -1)
        param = dict(model.named_parameters())[name].detach()
        t_after = (param - w0[name]).double().reshape(param.shape[0], -1)
        if norm == "frob":
            t_before, t_after = t_before.reshape(1, -1), t_after.reshape(1, -1)
        norms = t_before.abs().sum(1) if norm == "mars" else t_before.norm(dim=1)
        for j in range(t_before.shape[0]):
            if norms[j] <= 0.5:
                assert torch.equal(t_after[j], t_before[j]), (name, j)
                continue
            c = float((t_after[j] @ t_before[j]) / (t_before[j] @ t_before[j]))
            assert 0 < c <= 1
            assert c == pytest.approx(0.5 / float(norms[j]), rel=1e-4)
            torch.testing.assert_close(t_after[j], c * t_before[j], rtol=1e-4, atol=1e-6)


@norm_param
@mode_param
def test_infinite_radius_leaves_a_group_free(norm: Norm, mode: Mode) -> None:
    model = tiny_net()
    refs = snapshot(model, TINY_GROUPS)
    radius = {"stem": 0.2, "body": math.inf, "neck": 0.2}
    constraint = _constraint(model, norm, radius, mode=mode)
    perturb_(model, 10.0)
    before = params(model)
    constraint.project_()
    for ref in refs:
        if ref.group == "body":
            torch.testing.assert_close(ref.param.detach(), before[ref.name], rtol=1e-6, atol=0)
            if ref.kind == "matrix":
                assert torch.equal(ref.param.detach(), before[ref.name]), ref.name
        else:
            assert not torch.equal(ref.param.detach(), before[ref.name]), ref.name
    _assert_inside(refs, norm, {**radius, "head": HEAD_RADIUS}, relative=False)
    assert constraint.distances()["body"] > 1.0


@norm_param
def test_relative_infinite_radius_with_zero_gamma_stays_finite(norm: Norm) -> None:
    """inf * |d0| with d0 = 0 must still mean "free", not NaN."""
    model = tiny_net()
    with torch.no_grad():
        model.get_parameter("body.1.weight")[0] = 0.0  # a zero-initialised BatchNorm channel
        model.get_parameter("neck.0.weight")[0] = 0.0  # and a zero LayerNorm gamma
    constraint = _constraint(
        model, norm, {"stem": 0.5, "body": math.inf, "neck": math.inf}, relative=True
    )
    constraint.project_()
    for name, value in model.named_parameters():
        assert bool(torch.isfinite(value).all()), name
    assert float(model.get_parameter("body.1.weight").detach()[0]) == 0.0
    assert float(model.get_parameter("neck.0.weight").detach()[0]) == 0.0


def test_contract_signature() -> None:
    signature = inspect.signature(DistanceConstraint)
    parameters = signature.parameters
    assert list(parameters)[:6] == ["model", "norm", "radius", "head_radius", "head", "mode"]
    assert parameters["model"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    for name in ("norm", "radius", "head_radius", "head", "mode"):
        assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY, name
    assert parameters["mode"].default == "rescale"
    model = tiny_net()
    with pytest.raises(TypeError):
        DistanceConstraint(model, "mars", 1.0, 1.0, "fc")  # type: ignore[call-arg]
    by_float = DistanceConstraint(model, norm="mars", radius=1.0, head_radius=1.0, head="fc")
    assert by_float.mode == "rescale"
    groups = layer_groups(model, head="fc")
    by_dict = DistanceConstraint(
        model, norm="mars", radius=dict.fromkeys(groups.extractor, 1.0), head_radius=1.0, head="fc"
    )
    assert by_dict.radii == by_float.radii == {"extractor": 1.0, "head": 1.0}


def test_resnet18_groups_are_inside_geometric_radii() -> None:
    torch.manual_seed(0)
    model = resnet18(num_classes=3)
    groups = layer_groups(model, head="fc")
    radius = geometric_radii(groups.extractor, base=0.5, scale=2.0)
    for norm in NORMS:
        net = copy.deepcopy(model)
        refs = snapshot(net, groups)
        constraint = DistanceConstraint(
            net, norm=norm, radius=radius, head_radius=HEAD_RADIUS, head="fc"
        )
        perturb_(net, 0.05)
        constraint.project_()
        reported = constraint.distances()
        assert list(reported) == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
        for group, value in reported.items():
            limit = HEAD_RADIUS if group == "head" else radius[group]
            assert value <= limit * (1 + RTOL) + ATOL, (norm, group)
            assert value == pytest.approx(limit, rel=1e-3), (norm, group)
        _assert_inside(refs, norm, {**radius, "head": HEAD_RADIUS}, relative=False)


# ------------------------------------------------------------------------ BatchNorm rule


def _bn_model(gamma0: list[float], var0: list[float]) -> nn.Sequential:
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3, 2))
    with torch.no_grad():
        model.get_parameter("1.weight").copy_(torch.tensor(gamma0))
        model.get_buffer("1.running_var").copy_(torch.tensor(var0))
    return model


def _bn_by_hand(
    gamma0: list[float], var0: list[float], gamma: list[float], var: list[float], r: list[float]
) -> list[float]:
    out = []
    for g0, v0, g, v, radius in zip(gamma0, var0, gamma, var, r, strict=True):
        d0 = g0 / math.sqrt(v0 + 1e-6)
        t = g / math.sqrt(v + 1e-6) - d0
        t = max(-radius, min(radius, t))
        out.append((t + d0) * math.sqrt(v + 1e-6))
    return out


GAMMA0 = [1.0, 2.0, 0.5]
VAR0 = [1.0, 4.0, 1e-4]
GAMMA = [3.0, 0.5, 0.502]  # d - d0 = 2.0, -0.5 (current var), ~0.199
VAR = [1.0, 1.0, 1e-4]  # channel 1's running variance changed during training


@norm_param
@mode_param
def test_bn_gamma_is_clipped_through_its_diagonal(norm: Norm, mode: Mode) -> None:
    model = _bn_model(GAMMA0, VAR0)
    constraint = DistanceConstraint(
        model, norm=norm, radius=0.3, head_radius=100.0, head="3", mode=mode
    )
    with torch.no_grad():
        model.get_parameter("1.weight").copy_(torch.tensor(GAMMA))
        model.get_buffer("1.running_var").copy_(torch.tensor(VAR))
        model.get_parameter("1.bias").fill_(7.0)
    constraint.project_()
    expected = _bn_by_hand(GAMMA0, VAR0, GAMMA, VAR, [0.3] * 3)
    # by hand: channel 0 is clipped to d0 + 0.3, channel 1 to d0 - 0.3 with the *current*
    # variance 1.0 (not 4.0), channel 2 (|t| < 0.3) keeps its gamma
    assert expected[0] == pytest.approx(1.3, rel=1e-6)
    assert expected[1] == pytest.approx(0.7, rel=1e-6)  # 1.4 if the old variance were used
    gamma = model.get_parameter("1.weight").detach().double()
    torch.testing.assert_close(
        gamma, torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-7
    )
    assert torch.equal(model.get_parameter("1.bias").detach(), torch.full((3,), 7.0))
    d = (
        model.get_parameter("1.weight").detach().double()
        / (torch.tensor(VAR, dtype=torch.float64) + BN_EPS).sqrt()
    )
    d0 = (
        torch.tensor(GAMMA0, dtype=torch.float64)
        / (torch.tensor(VAR0, dtype=torch.float64) + BN_EPS).sqrt()
    )
    distances_ = constraint.distances()
    assert distances_["extractor"] >= float((d - d0).abs().max()) - 1e-5


def test_bn_epsilon_is_1e6_not_the_layers_eps() -> None:
    model = _bn_model(GAMMA0, VAR0)
    constraint = DistanceConstraint(model, norm="mars", radius=0.1, head_radius=100.0, head="3")
    with torch.no_grad():
        model.get_parameter("1.weight").copy_(torch.tensor(GAMMA))
    constraint.project_()
    # channel 2 has var 1e-4: sqrt(1e-4 + 1e-6) and sqrt(1e-4 + 1e-5) differ by ~5%
    d0 = 0.5 / math.sqrt(1e-4 + 1e-6)
    assert float(model.get_parameter("1.weight").detach()[2]) == pytest.approx(
        (d0 + 0.1) * math.sqrt(1e-4 + 1e-6), rel=1e-5
    )


@norm_param
def test_bn_relative_radius_is_a_fraction_of_each_channels_diagonal(norm: Norm) -> None:
    model = _bn_model(GAMMA0, VAR0)
    constraint = DistanceConstraint(
        model, norm=norm, radius=0.25, head_radius=100.0, head="3", relative=True
    )
    with torch.no_grad():
        model.get_parameter("1.weight").copy_(torch.tensor(GAMMA))
        model.get_buffer("1.running_var").copy_(torch.tensor(VAR))
    constraint.project_()
    r = [0.25 * abs(g / math.sqrt(v + 1e-6)) for g, v in zip(GAMMA0, VAR0, strict=True)]
    expected = _bn_by_hand(GAMMA0, VAR0, GAMMA, VAR, r)
    gamma = model.get_parameter("1.weight").detach().double()
    torch.testing.assert_close(
        gamma, torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-7
    )


# ------------------------------------------------------------------------------- MARS rows


def _set_row_offsets(weight: torch.Tensor, w0: torch.Tensor, l1: list[float]) -> None:
    """Row j of ``weight - w0`` gets l1 norm ``l1[j]``, spread unevenly over its entries."""
    rows = weight.shape[0]
    length = weight[0].numel()
    pattern = torch.arange(1, length + 1, dtype=torch.float32)
    pattern[::2] *= -1
    pattern /= pattern.abs().sum()
    with torch.no_grad():
        for j in range(rows):
            weight[j] = w0[j] + (pattern * l1[j]).reshape(weight[j].shape)


@pytest.mark.parametrize(
    "layer",
    [nn.Conv2d(4, 5, 3), nn.Linear(7, 5), nn.Conv2d(5, 5, 3, groups=5)],
    ids=["conv", "linear", "depthwise"],
)
@mode_param
def test_rows_are_output_units(layer: nn.Module, mode: Mode) -> None:
    model = nn.Sequential(layer, nn.Flatten(), nn.Linear(1, 2))  # the head is irrelevant
    weight = model.get_parameter("0.weight")
    w0 = weight.detach().clone()
    constraint = DistanceConstraint(
        model, norm="mars", radius=3.0, head_radius=100.0, head="2", mode=mode
    )
    l1 = [1.0, 2.0, 4.0, 6.0, 2.5]  # rows 0, 1 and 4 inside (< 3), rows 2 and 3 outside
    _set_row_offsets(weight, w0, l1)
    moved = weight.detach().clone()
    assert constraint.distances()["extractor"] == pytest.approx(6.0, rel=1e-5)
    constraint.project_()
    after = (weight.detach() - w0).double().reshape(5, -1)
    row_l1 = after.abs().sum(1)
    for j, value in enumerate(l1):
        if value <= 3.0:
            assert torch.equal(weight[j].detach(), moved[j]), j
        else:
            assert float(row_l1[j]) == pytest.approx(3.0, rel=1e-5), j
    assert weight.shape[0] == 5
    assert constraint.distances()["extractor"] == pytest.approx(3.0, rel=1e-5)


@norm_param
@mode_param
def test_channels_last_is_projected_like_contiguous(norm: Norm, mode: Mode) -> None:
    contiguous = tiny_net()
    channels_last = copy.deepcopy(contiguous).to(memory_format=torch.channels_last)
    conv = channels_last.get_parameter("stem.0.weight")
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert not conv.is_contiguous()
    results = []
    for model in (contiguous, channels_last):
        constraint = _constraint(model, norm, 0.4, mode=mode)
        perturb_(model, 1.0)
        constraint.project_()
        results.append((params(model), constraint.distances()))
    (a, dist_a), (b, dist_b) = results
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-6, atol=1e-6)
    assert dist_a == pytest.approx(dist_b, rel=1e-6)


# -------------------------------------------------------------------------------- chunking


@norm_param
@mode_param
@pytest.mark.parametrize("chunk", [1, 7, 50, 300, None])
def test_chunk_size_does_not_change_the_result(norm: Norm, mode: Mode, chunk: int | None) -> None:
    results = []
    for size in (0, chunk):
        torch.manual_seed(0)
        model = DigitsCNN(3, widths=(4, 6, 8))
        groups = layer_groups(model, head="fc")
        radius = {"block1": 0.3, "block2": 0.6, "block3": math.inf}
        constraint = DistanceConstraint(
            model, norm=norm, radius=radius, head_radius=0.5, head="fc", mode=mode,
            groups=groups, chunk=size,
        )  # fmt: skip
        perturb_(model, 0.5)
        before = constraint.distances()
        constraint.project_()
        results.append((params(model), before, constraint.distances()))
    (a, before_a, after_a), (b, before_b, after_b) = results
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-6, atol=1e-6)
    assert before_a == pytest.approx(before_b, rel=1e-6)
    assert after_a == pytest.approx(after_b, rel=1e-6)


@norm_param
def test_chunking_on_resnet18_matches_no_chunking(norm: Norm) -> None:
    torch.manual_seed(0)
    base = resnet18(num_classes=3)
    results = []
    for chunk in (0, 4096):
        model = copy.deepcopy(base)
        constraint = DistanceConstraint(
            model, norm=norm, radius=0.5, head_radius=1.0, head="fc", chunk=chunk
        )
        perturb_(model, 0.01)
        constraint.project_()
        results.append(params(model))
    for name, value in results[0].items():
        torch.testing.assert_close(value, results[1][name], rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------- errors


def _build(**kwargs: Any) -> DistanceConstraint:
    arguments: dict[str, Any] = {
        "norm": "mars", "radius": 1.0, "head_radius": 1.0, "head": "fc", "groups": TINY_GROUPS,
    }  # fmt: skip
    arguments.update(kwargs)
    return DistanceConstraint(tiny_net(), **arguments)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"norm": "l2"}, "'l2'"),
        ({"norm": "none"}, "'none'"),
        ({"mode": "soft"}, "'soft'"),
        ({"radius": 0.0}, "0.0"),
        ({"radius": -1.5}, "-1.5"),
        ({"radius": math.nan}, "nan"),
        ({"radius": True}, "True"),
        ({"head_radius": 0}, "head_radius"),
        ({"head_radius": -2.0}, "-2.0"),
        ({"radius": {"stem": 1.0, "body": 1.0, "neck": 1.0, "layer9": 1.0}}, "'layer9'"),
        ({"radius": {"stem": 1.0, "neck": 1.0}}, "body"),
        ({"radius": {"stem": 1.0, "body": -3.0, "neck": 1.0}}, "-3.0"),
        ({"radius": {"stem": 1.0, "body": 0.0, "neck": 1.0}}, "body"),
    ],
)
def test_bad_arguments_raise_config_error_naming_the_value(
    kwargs: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _build(**kwargs)
    assert needle in str(info.value)


def test_unknown_head_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'classifier'"):
        DistanceConstraint(tiny_net(), norm="mars", radius=1.0, head_radius=1.0, head="classifier")


# ---------------------------------------------------------------------- registry builder


def test_build_constraint_with_base_and_scale_uses_geometric_radii() -> None:
    model = tiny_net()
    cfg = ConstraintConfig(norm="mars", radius=0.2, scale=3.0, head_radius=4.0, mode="exact")
    built = build_constraint(cfg, model, head="fc", groups=TINY_GROUPS)
    assert isinstance(built, DistanceConstraint)
    assert built.radii == pytest.approx({"stem": 0.2, "body": 0.6, "neck": 1.8, "head": 4.0})
    assert built.mode == "exact"
    none = build_constraint(ConstraintConfig(), model, head="fc", groups=TINY_GROUPS)
    assert isinstance(none, NoConstraint)
    perturb_(model, 1.0)
    before = params(model)
    none.project_()
    assert none.distances() == {}
    assert all(torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())


def test_offsets_helper_sees_the_head_from_zero() -> None:
    """Self-check of the tests' own reference: the head's W0 is zero."""
    model = tiny_net()
    refs = {ref.name: ref for ref in snapshot(model, TINY_GROUPS)}
    head = refs["fc.weight"]
    torch.testing.assert_close(offsets(head), model.fc.weight.detach().double())
    assert float(offsets(refs["stem.0.weight"]).abs().max()) == 0.0


@pytest.mark.parametrize(
    ("norm", "mode", "relative"),
    [("mars", "rescale", False), ("mars", "exact", False), ("frob", "rescale", True)],
)
def test_a_resnet_is_projected_as_the_reference_loop_projects_it(
    norm: Norm, mode: Mode, relative: bool
) -> None:
    """The vectorised plan (row blocks, chunks, the BatchNorm diagonal) against the plain
    per-tensor loop of :mod:`tether.testing.reference`, on every tensor of a ResNet-18."""
    from tether.testing.reference import NaiveProjection

    torch.manual_seed(0)
    model = resnet18(num_classes=10)
    model.train()
    model(torch.randn(4, 3, 32, 32))  # BatchNorm running variances away from 1
    constraint = DistanceConstraint(
        model, norm=norm, radius=0.01, head_radius=0.5, head="fc", mode=mode, relative=relative,
        chunk=4096,  # many chunks, rows split across them
    )  # fmt: skip
    oracle_model = copy.deepcopy(model)
    oracle_constraint = DistanceConstraint(
        oracle_model, norm=norm, radius=0.01, head_radius=0.5, head="fc", relative=relative
    )
    oracle = NaiveProjection(
        oracle_constraint.targets,
        oracle_constraint.reference,
        oracle_constraint.radii,
        norm=norm,
        exact=mode == "exact",
        relative=relative,
    )
    with torch.no_grad():
        for pair in zip(model.parameters(), oracle_model.parameters(), strict=True):
            nudge = 0.05 * torch.randn_like(pair[0])
            for p in pair:
                p.add_(nudge)
    constraint.project_()
    oracle.project_()
    for (name, got), want in zip(model.named_parameters(), oracle_model.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)
