"""Conformance suite for the penalties: every registered name (DELTA has its own file)."""

from __future__ import annotations

from collections.abc import Callable
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tests.finetune.conftest import TINY_GROUPS
from tests.finetune.conftest import TinyNet
from tests.finetune.conftest import params
from tests.finetune.conftest import perturb_
from tests.finetune.conftest import tiny_net
from tests.finetune.regularizers.conftest import penalty_context
from tests.finetune.regularizers.conftest import penalty_value
from tests.finetune.regularizers.conftest import two_linears
from tether.errors import ConfigError
from tether.finetune.layers import LayerGroups
from tether.finetune.regularizers import BasePenalty
from tether.finetune.regularizers import DistancePenalty
from tether.finetune.regularizers import NoPenalty
from tether.finetune.regularizers import PenaltyConfig
from tether.finetune.regularizers import build_penalty
from tether.finetune.regularizers import list_penalties
from tether.finetune.regularizers import penalty_info


# DELTA, BSS and L2-SP-Fisher need a forward pass or a source task: they have their own files.
PENALTIES = [n for n in list_penalties() if n not in ("delta", "bss", "l2-sp-fisher")]
ALPHA = 0.3
BETA = 0.07
INPUTS = torch.zeros(2, 3, 8, 8)


def _penalty(
    name: str, model: nn.Module, tmp_path: Path, *, beta: float = BETA, include: str = "weights"
) -> BasePenalty:
    cfg = PenaltyConfig(name=name, alpha=ALPHA, beta=beta, include=include)  # type: ignore[arg-type]
    return build_penalty(cfg, penalty_context(model, tmp_path))


# --------------------------------------------------------------- the tests' own formulas


def _kinds(model: TinyNet) -> tuple[list[str], list[str], list[str], list[str]]:
    """Names of the extractor's conv/linear weights, BN gammas, LN gammas, and other params."""
    matrices, bn, ln, other = [], [], [], []
    for name, module in model.named_modules():
        if name.startswith("fc"):
            continue
        if isinstance(module, nn.Conv2d | nn.Linear):
            matrices.append(f"{name}.weight")
        elif isinstance(module, nn.BatchNorm2d):
            bn.append(f"{name}.weight")
        elif isinstance(module, nn.LayerNorm):
            ln.append(f"{name}.weight")
    named = set(matrices + bn + ln)
    other = [n for n, _ in model.named_parameters() if n not in named and not n.startswith("fc")]
    return matrices, bn, ln, other


def _max_row_l1(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).abs().sum(1).max()


def _by_hand(
    name: str, model: TinyNet, w0: dict[str, torch.Tensor], *, beta: float, include: str
) -> float:
    now = {k: v.detach().double() for k, v in model.named_parameters()}
    diff = {k: now[k] - w0[k].double() for k in now}
    matrices, bn, ln, other = _kinds(model)
    head = now["fc.weight"]
    if include == "all":
        tensors = matrices + bn + ln + other
    elif name in ("l2-sp", "l1-sp"):
        tensors = matrices
    else:
        tensors = matrices + bn + ln
    if name == "l1-sp":  # wd_mode 4: L1 on the pretrained weights, L2 on the head
        pretrained = sum(float(diff[k].abs().sum()) for k in tensors)
        return ALPHA * pretrained + beta / 2 * float(head.square().sum())
    if name in ("l2-sp", "frob-sp"):
        pretrained = sum(float(diff[k].square().sum()) for k in tensors)
        total = ALPHA * pretrained + beta * float(head.square().sum())
        return total / 2 if name == "l2-sp" else total
    assert name == "mars-sp"
    pretrained = 0.0
    for k in tensors:
        if diff[k].dim() >= 2:
            pretrained += float(_max_row_l1(diff[k]))
        else:
            pretrained += float(diff[k].abs().sum())
    return ALPHA * pretrained + beta * float(_max_row_l1(head))


# --------------------------------------------------------------------------- conformance


@pytest.mark.parametrize("name", PENALTIES)
def test_registry_lists_the_penalties(name: str) -> None:
    assert {"none", "l2-sp", "l1-sp", "frob-sp", "mars-sp"} <= set(PENALTIES)
    assert name in list_penalties()


@pytest.mark.parametrize("name", PENALTIES)
@pytest.mark.parametrize("include", ["weights", "all"])
def test_at_w0_only_the_head_term_is_left(name: str, include: str, tmp_path: Path) -> None:
    model = tiny_net()
    penalty = _penalty(name, model, tmp_path, include=include)
    value = penalty(INPUTS)
    assert value.dim() == 0
    if name == "none":
        assert isinstance(penalty, NoPenalty)
        assert float(value.detach()) == 0.0
        return
    w0 = params(model)
    expected = _by_hand(name, model, w0, beta=BETA, include=include)
    assert expected > 0  # the head is not zero
    assert float(value.detach()) == pytest.approx(expected, rel=1e-5)
    zero_beta = _penalty(name, model, tmp_path, beta=0.0, include=include)
    assert float(zero_beta(INPUTS).detach()) == 0.0


@pytest.mark.parametrize("name", PENALTIES)
@pytest.mark.parametrize("include", ["weights", "all"])
@pytest.mark.parametrize("moved", [False, True])
def test_gradients_are_finite(name: str, include: str, moved: bool, tmp_path: Path) -> None:
    model = tiny_net()
    penalty = _penalty(name, model, tmp_path, include=include)
    if moved:
        perturb_(model, 0.5)
    value = penalty(INPUTS)
    assert bool(torch.isfinite(value))
    if not value.requires_grad:
        assert name == "none"
        return
    value.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads
    for grad in grads:
        assert bool(torch.isfinite(grad).all())


@pytest.mark.parametrize("name", [n for n in PENALTIES if n != "none"])
@pytest.mark.parametrize("include", ["weights", "all"])
def test_value_after_a_perturbation_matches_the_formula(
    name: str, include: str, tmp_path: Path
) -> None:
    model = tiny_net()
    w0 = params(model)
    penalty = _penalty(name, model, tmp_path, include=include)
    perturb_(model, 0.2)
    expected = _by_hand(name, model, w0, beta=BETA, include=include)
    assert float(penalty(INPUTS).detach()) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", [n for n in PENALTIES if n != "none"])
def test_include_selects_the_parameter_set(name: str, tmp_path: Path) -> None:
    """Biases and betas count only with include="all"; gammas only in frob-sp/mars-sp/all."""
    cases: dict[str, Callable[[TinyNet], nn.Parameter]] = {
        "conv bias": lambda m: m.get_parameter("stem.0.bias"),
        "bn beta": lambda m: m.get_parameter("body.1.bias"),
        "ln beta": lambda m: m.get_parameter("neck.0.bias"),
        "bn gamma": lambda m: m.get_parameter("body.1.weight"),
        "ln gamma": lambda m: m.get_parameter("neck.0.weight"),
        "conv weight": lambda m: m.get_parameter("body.3.weight"),
    }
    for case, get in cases.items():
        for include in ("weights", "all"):
            model = tiny_net()
            penalty = _penalty(name, model, tmp_path, beta=0.0, include=include)
            with torch.no_grad():
                get(model).add_(0.5)
            value = float(penalty(INPUTS).detach())
            counted = (
                include == "all"
                or case == "conv weight"
                or (case.endswith("gamma") and name not in ("l2-sp", "l1-sp"))
            )
            assert (value > 0) == counted, (case, include, value)


def test_l2sp_by_hand_small_numbers(tmp_path: Path) -> None:
    """alpha/2 ||w - w0||^2 + beta/2 ||w_head||^2 on numbers small enough to check by eye."""
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model.get_parameter("0.weight").copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        model.get_parameter("1.weight").copy_(torch.tensor([[1.0, 0.0], [0.0, -2.0]]))
    groups = LayerGroups({"extractor": ("0",), "head": ("1",)})
    penalty = DistancePenalty(
        model, head="1", distance="squared", alpha=0.1, beta=0.01, half=True, groups=groups
    )
    with torch.no_grad():
        model.get_parameter("0.weight").add_(torch.tensor([[1.0, 0.0], [0.0, -2.0]]))
    # 0.1/2 * (1 + 4) + 0.01/2 * (1 + 4) = 0.25 + 0.025
    assert float(penalty(INPUTS).detach()) == pytest.approx(0.275, rel=1e-6)
    mars = DistancePenalty(model, head="1", distance="mars", alpha=1.0, beta=1.0, groups=groups)
    with torch.no_grad():
        model.get_parameter("0.weight").add_(torch.tensor([[0.5, -0.5], [0.0, 0.25]]))
    # rows of W - W0: 1.0, 0.25 -> max 1.0; head rows 1, 2 -> max 2
    assert float(mars(INPUTS).detach()) == pytest.approx(3.0, rel=1e-6)


def test_mars_sp_is_a_sum_over_tensors_of_the_largest_row(tmp_path: Path) -> None:
    model = tiny_net()
    penalty = _penalty("mars-sp", model, tmp_path, beta=0.0)
    with torch.no_grad():
        model.get_parameter("stem.0.weight")[2] += 0.1  # one row of 27 entries: l1 = 2.7
        model.get_parameter("neck.1.weight")[0, 0] -= 1.0  # l1 = 1
        model.get_parameter("neck.1.weight")[5, 1] += (
            0.5  # another row of the same tensor, smaller
        )
    assert float(penalty(INPUTS).detach()) == pytest.approx(ALPHA * (2.7 + 1.0), rel=1e-5)


def test_no_penalty_is_zero_on_the_inputs_device() -> None:
    penalty = NoPenalty()
    value = penalty(INPUTS)
    assert value.dim() == 0
    assert float(value.detach()) == 0.0
    assert value.device == INPUTS.device


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"alpha": -0.1}, "penalty.alpha"),
        ({"beta": -1.0}, "-1.0"),
        ({"include": "biases"}, "'biases'"),
    ],
)
def test_bad_penalty_arguments(kwargs: dict[str, object], needle: str) -> None:
    arguments: dict[str, object] = {"distance": "squared", "alpha": 0.1, "beta": 0.1}
    arguments.update(kwargs)
    with pytest.raises(ConfigError) as info:
        DistancePenalty(tiny_net(), head="fc", groups=TINY_GROUPS, **arguments)  # type: ignore[arg-type]
    assert needle in str(info.value)


def test_penalty_config_rejects_unknown_names() -> None:
    with pytest.raises(ConfigError, match="'l3-sp'") as info:
        PenaltyConfig(name="l3-sp")
    for name in PENALTIES:
        assert name in str(info.value)


NEW = ("l1-sp", "bss", "l2-sp-fisher")


# --------------------------------------------------------------------------------- registry


def test_the_new_penalties_are_registered_with_a_description() -> None:
    for name in NEW:
        assert name in list_penalties()
        assert penalty_info(name).description
    with pytest.raises(ConfigError) as info:
        PenaltyConfig(name="l3-sp")
    for name in NEW:
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"k": 0}, "penalty.k must be an integer >= 1, got 0"),
        ({"k": True}, "penalty.k"),
        ({"fisher_samples": 0}, "penalty.fisher_samples must be an integer >= 1"),
        ({"fisher_epsilon": -1e-3}, "penalty.fisher_epsilon must be >= 0"),
        ({"fisher_epsilon": math.inf}, "penalty.fisher_epsilon must be finite"),
        ({"fisher_data": " "}, "penalty.fisher_data must be a folder path"),
    ],
)
def test_bad_settings_name_their_key(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        PenaltyConfig(name="l2-sp-fisher", **kwargs)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_the_defaults() -> None:
    cfg = PenaltyConfig(name="bss")
    assert (cfg.k, cfg.fisher_samples, cfg.fisher_epsilon, cfg.fisher_data) == (
        1, 512, 1e-3, None,
    )  # fmt: skip


# -------------------------------------------------------------------------------------- L1-SP


def test_l1sp_by_hand(tmp_path: Path) -> None:
    """alpha sum |w - w0| + beta/2 ||w_head||^2 (wd_mode 4: the head keeps the L2 term)."""
    model, groups = two_linears()
    cfg = PenaltyConfig(name="l1-sp", alpha=0.1, beta=0.01)
    penalty = build_penalty(cfg, penalty_context(model, tmp_path, head="1", groups=groups))
    # at W0: 0.01/2 * (1 + 4)
    assert penalty_value(penalty) == pytest.approx(0.025, rel=1e-6)
    with torch.no_grad():
        model.get_parameter("0.weight").add_(torch.tensor([[1.0, 0.0], [0.0, -2.0]]))
    # 0.1 * (1 + 2) + 0.025
    value = penalty(torch.zeros(1))
    assert float(value.detach()) == pytest.approx(0.325, rel=1e-6)
    value.backward()
    grad = model.get_parameter("0.weight").grad
    assert grad is not None
    torch.testing.assert_close(grad, torch.tensor([[0.1, 0.0], [0.0, -0.1]]))
    head_grad = model.get_parameter("1.weight").grad
    torch.testing.assert_close(head_grad, 0.01 * model.get_parameter("1.weight").detach())


@pytest.mark.parametrize("include", ["weights", "all"])
def test_l1sp_on_a_network_matches_the_formula(include: str, tmp_path: Path) -> None:
    model = tiny_net()
    w0 = params(model)
    cfg = PenaltyConfig(name="l1-sp", alpha=0.3, beta=0.07, include=include)  # type: ignore[arg-type]
    penalty = build_penalty(cfg, penalty_context(model, tmp_path))
    perturb_(model, 0.2)
    matrices = {
        f"{n}.weight"
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear) and not n.startswith("fc")
    }
    expected = 0.0
    for name, param in model.named_parameters():
        if name.startswith("fc"):
            continue
        if include == "all" or name in matrices:  # no gammas, biases, betas with "weights"
            expected += 0.3 * float((param.detach().double() - w0[name].double()).abs().sum())
    expected += 0.07 / 2 * float(model.fc.weight.detach().double().square().sum())
    assert penalty_value(penalty) == pytest.approx(expected, rel=1e-5)
