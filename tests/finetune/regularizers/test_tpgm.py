"""TPGM against reference/learned-radii.md: operator, hypergradient, init, clip, post-hoc."""

from __future__ import annotations

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from tether.errors import ConfigError
from tether.finetune.data.types import Split
from tether.finetune.data.types import hold_out
from tether.finetune.regularizers._tpgm import TPGM


def _moved_linear(seed: int = 0) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    """A bias-free linear layer moved from W0 by D with very different row sizes."""
    torch.manual_seed(seed)
    layer = nn.Linear(5, 4, bias=False)
    w0 = layer.weight.detach().clone()
    d = torch.randn(4, 5) * torch.tensor([[0.01], [0.1], [1.0], [3.0]])
    with torch.no_grad():
        layer.weight.add_(d)
    return layer, w0, d


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return torch.randn(32, 5, generator=g), torch.randint(0, 4, (32,), generator=g)


def _tpgm(layer: nn.Linear, w0: torch.Tensor, **kwargs: object) -> TPGM:
    moved = layer.weight.detach().clone()
    with torch.no_grad():
        layer.weight.copy_(w0)  # W0 is the weight when TPGM is built
    tpgm = TPGM(layer, [(layer.weight, "rows")], heldout=_batch, **kwargs)  # type: ignore[arg-type]
    with torch.no_grad():
        layer.weight.copy_(moved)
    return tpgm


def test_hypergradient_matches_the_closed_form_and_autograd() -> None:
    layer, w0, d = _moved_linear()
    tpgm = _tpgm(layer, w0)
    n = d.abs().sum(1) + 1e-8
    radius = float(n[1] + n[2]) / 2  # rows 0 and 1 inside, rows 2 and 3 outside
    g = torch.tensor(radius, dtype=torch.float64, requires_grad=True)
    w_tilde = w0.double() + torch.clamp(g / n.double(), 0, 1).unsqueeze(1) * d.double()
    x, y = _batch()
    F.cross_entropy(x.double() @ w_tilde.T, y).backward()
    tilde = (w0 + torch.clamp(radius / n, max=1).unsqueeze(1) * d).requires_grad_()
    F.cross_entropy(x @ tilde.T, y).backward()
    outside = radius / n < 1
    closed = float(((tilde.grad * d).sum(1) / n)[outside].sum())  # type: ignore[operator]
    computed = tpgm.hypergradient([tilde.grad], [d], [n], torch.tensor([radius]))  # type: ignore[list-item]
    torch.testing.assert_close(float(computed[0]), closed, rtol=1e-5, atol=1e-8)
    assert g.grad is not None
    torch.testing.assert_close(float(computed[0]), float(g.grad), rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize(("init", "expected"), [("tight", "min/2"), ("loose", "max")])
def test_first_radius_and_its_clip(init: str, expected: str) -> None:
    layer, w0, d = _moved_linear()
    tpgm = _tpgm(layer, w0, init=init, radius_lr=1e-12)
    tpgm.update_radii()
    n = d.abs().sum(1) + 1e-8
    start = float(n.min() / 2) if expected == "min/2" else float(n.max())
    assert tpgm.radii is not None
    torch.testing.assert_close(float(tpgm.radii[0]), start, rtol=1e-5, atol=1e-9)


def test_the_radius_is_clipped_into_its_bounds() -> None:
    layer, w0, d = _moved_linear()
    tpgm = _tpgm(layer, w0, radius_lr=1e3, init="loose")
    for _ in range(5):
        tpgm.update_radii()
        assert tpgm.radii is not None
        r = float(tpgm.radii[0])
        assert 1e-8 <= r <= float(d.abs().sum(1).max()) + 1e-6


def test_projection_rows_inside_unchanged_outside_on_the_sphere() -> None:
    layer, w0, d = _moved_linear()
    tpgm = _tpgm(layer, w0, init="tight", radius_lr=1e-12)
    before = layer.weight.detach().clone()
    tpgm.project_()
    assert tpgm.radii is not None
    r = float(tpgm.radii[0])
    n = (before - w0).abs().sum(1)
    after = (layer.weight.detach() - w0).abs().sum(1)
    for row in range(4):
        if n[row] <= r:
            assert torch.equal(layer.weight[row], before[row])
        else:
            torch.testing.assert_close(float(after[row]), r, rtol=1e-5, atol=1e-7)


def test_a_vanishing_radius_gives_w0() -> None:
    layer, w0, _ = _moved_linear()
    tpgm = _tpgm(layer, w0, init="tight")
    tpgm.update_radii()
    assert tpgm.radius is not None
    tpgm.radius.radii = torch.full_like(tpgm.radius.radii, 1e-8)
    tpgm.every = 10**9  # project with this radius, no update
    tpgm.project_()
    torch.testing.assert_close(layer.weight.detach(), w0, atol=1e-7, rtol=0)


def test_updates_happen_every_proj_freq_steps() -> None:
    layer, w0, _ = _moved_linear()
    tpgm = _tpgm(layer, w0, every=3, iters=2)
    counts = []
    for _ in range(7):
        tpgm.project_()
        counts.append(tpgm.updates)
    assert counts == [0, 0, 2, 2, 2, 4, 4]


def test_posthoc_frob_is_a_per_tensor_interpolation() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 4))
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    tensors = [(p, "rows") for p in model.parameters()]
    tpgm = TPGM(model, tensors, heldout=_batch, norm="frob", init="loose")  # type: ignore[arg-type]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    moved = {n: p.detach().clone() for n, p in model.named_parameters()}
    tpgm.fit(20)
    assert tpgm.updates == 20
    assert tpgm.radii is not None
    for (name, p), g in zip(model.named_parameters(), tpgm.radii.tolist(), strict=True):
        d = moved[name] - w0[name]
        expected = w0[name] + min(1.0, g / (float(d.norm()) + 1e-8)) * d
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)


def test_the_heldout_forward_runs_in_eval_mode_and_restores_training() -> None:
    first, norm = nn.Linear(5, 5), nn.BatchNorm1d(5)
    model = nn.Sequential(first, norm, nn.Linear(5, 4))
    modes = []
    norm.register_forward_pre_hook(lambda m, a: modes.append(m.training))
    tpgm = TPGM(model, [(first.weight, "rows")], heldout=_batch)
    model.train()
    tpgm.project_()
    assert modes == [False]
    assert model.training
    assert torch.equal(norm.running_mean, torch.zeros(5)), "running stats untouched"  # type: ignore[arg-type]


def test_bad_settings_are_refused() -> None:
    layer = nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="proj_freq"):
        TPGM(layer, [(layer.weight, "rows")], heldout=_batch, every=0)
    with pytest.raises(ConfigError, match="init"):
        TPGM(layer, [(layer.weight, "rows")], heldout=_batch, init="wide")  # type: ignore[arg-type]


def test_hold_out_carves_a_share_and_refuses_to_leave_nothing() -> None:
    split = Split(torch.zeros(10, 3, 2, 2, dtype=torch.uint8), torch.arange(10))
    rest, held = hold_out(split, 0.3, seed=0)
    assert (len(rest), len(held)) == (7, 3)
    assert sorted(rest.labels.tolist() + held.labels.tolist()) == list(range(10))
    assert rest.labels.tolist() == sorted(rest.labels.tolist()), "the rest keeps its order"
    with pytest.raises(ConfigError, match="leaves none to train on"):
        hold_out(Split(split.images[:1], split.labels[:1]), 0.5, seed=0)
