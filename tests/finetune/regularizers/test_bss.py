"""BSS (Chen et al., NeurIPS 2019): the spectral shrinkage by hand, its hook, its gradient."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.finetune.regularizers.conftest import penalty_context
from tether.errors import ConfigError
from tether.finetune.regularizers import PenaltyConfig
from tether.finetune.regularizers import build_penalty
from tether.finetune.regularizers._bss import BatchSpectralShrinkage
from tether.finetune.regularizers._bss import spectral_shrinkage


# ---------------------------------------------------------------------------------------- BSS


def test_spectral_shrinkage_of_a_diagonal_by_hand() -> None:
    features = torch.zeros(3, 5)
    features[:3, :3] = torch.diag(torch.tensor([3.0, 2.0, 1.0]))
    assert float(spectral_shrinkage(features, 1)) == pytest.approx(1.0)
    assert float(spectral_shrinkage(features, 2)) == pytest.approx(5.0)
    assert float(spectral_shrinkage(features, 3)) == pytest.approx(14.0)
    # k above min(b, d) = 3: every singular value, the squared Frobenius norm
    assert float(spectral_shrinkage(features, 10)) == pytest.approx(14.0)


@pytest.mark.parametrize(("b", "d", "k"), [(8, 5, 1), (8, 5, 3), (4, 12, 2)])
def test_spectral_shrinkage_equals_the_smallest_eigenvalues_of_f_ft(
    b: int, d: int, k: int
) -> None:
    features = torch.randn(b, d, generator=torch.Generator().manual_seed(b + d))
    gram = (
        features.double() @ features.double().T
        if b <= d
        else features.double().T @ features.double()
    )
    smallest = torch.linalg.eigvalsh(gram)[:k].sum()  # ascending; squared singular values
    assert float(spectral_shrinkage(features, k)) == pytest.approx(float(smallest), rel=1e-4)
    svd = torch.linalg.svdvals(features.double())
    assert float(spectral_shrinkage(features, k)) == pytest.approx(
        float(svd[-k:].square().sum()), rel=1e-5
    )


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))


def test_bss_uses_the_head_input_of_the_last_forward_and_its_gradient() -> None:
    model = _mlp()
    cfg = PenaltyConfig(name="bss", alpha=0.5, k=2)
    penalty = build_penalty(cfg, penalty_context(model, Path("."), head="2"))
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(1))
    model(x)
    value = penalty(x)
    features = model[1](model[0](x))
    expected = 0.5 * torch.linalg.svdvals(features)[-2:].square().sum()
    assert float(value.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    first = model.get_parameter("0.weight")
    (grad,) = torch.autograd.grad(value, first)
    (want,) = torch.autograd.grad(expected, first)
    assert float(grad.abs().sum()) > 0
    torch.testing.assert_close(grad, want, rtol=1e-4, atol=1e-6)


def test_bss_gradient_shrinks_the_smallest_singularpenalty_value() -> None:
    model = _mlp()
    penalty = BatchSpectralShrinkage(model, head="2", eta=1.0, k=1)
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(2))
    model(x)
    before = float(penalty(x).detach())
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(5):
        model(x)
        value = penalty(x)
        opt.zero_grad()
        value.backward()
        opt.step()
    model(x)
    assert float(penalty(x).detach()) < before


def test_bss_needs_a_forward_with_gradients_and_uses_it_once() -> None:
    model = _mlp()
    penalty = BatchSpectralShrinkage(model, head="2", eta=1.0)
    x = torch.randn(5, 4)
    with pytest.raises(RuntimeError, match="run model\\(inputs\\)"):
        penalty(x)
    with torch.no_grad():  # evaluation: nothing captured
        model(x)
    with pytest.raises(RuntimeError, match="run model\\(inputs\\)"):
        penalty(x)
    model(x)
    penalty(x)
    with pytest.raises(RuntimeError, match="run model\\(inputs\\)"):
        penalty(x)
    model(x)
    with pytest.raises(RuntimeError, match="batch of 5"):
        penalty(torch.randn(3, 4))


def test_bss_hook_goes_with_remove_and_with_the_penalty() -> None:
    model = _mlp()
    head = model[2]
    penalty = BatchSpectralShrinkage(model, head="2", eta=1.0)
    assert len(head._forward_pre_hooks) == 1
    penalty.remove()
    assert len(head._forward_pre_hooks) == 0
    penalty.remove()  # twice is fine
    penalty = BatchSpectralShrinkage(model, head="2", eta=1.0)
    assert len(head._forward_pre_hooks) == 1
    del penalty
    gc.collect()
    assert len(head._forward_pre_hooks) == 0


def test_bss_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="no module named 'head'"):
        BatchSpectralShrinkage(_mlp(), head="head", eta=1.0)
    with pytest.raises(ConfigError, match="penalty.k"):
        BatchSpectralShrinkage(_mlp(), head="2", eta=1.0, k=0)
    with pytest.raises(ConfigError, match="penalty.alpha"):
        BatchSpectralShrinkage(_mlp(), head="2", eta=-1.0)
