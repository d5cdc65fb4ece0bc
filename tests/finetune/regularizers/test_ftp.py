"""FTP against the formulas of reference/learned-radii.md, recomputed here step by step."""

from __future__ import annotations

import copy as copy_module

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from tether.errors import ConfigError
from tether.finetune.layers import LayerGroups
from tether.finetune.regularizers._ftp import FTP
from tether.finetune.regularizers._learned import constrained_tensors


class TwoParts(nn.Module):
    """A body and a head whose losses do not touch each other (their gradients are separate)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(5, 3)
        self.head = nn.Linear(4, 2)

    def loss(self, x: torch.Tensor, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(torch.tanh(self.body(x)), y) + self.head(z).square().mean()


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return (
        torch.randn(8, 5, generator=g),
        torch.randn(8, 4, generator=g),
        torch.randn(8, 3, generator=g),
    )


def _train(model: TwoParts, opt: torch.optim.Optimizer, *, steps: int) -> None:
    for t in range(steps):
        opt.zero_grad()
        model.loss(*_batch(t)).backward()
        opt.step()


def _row_l1(t: torch.Tensor) -> torch.Tensor:
    return t.abs().reshape(t.shape[0], -1).sum(1) if t.dim() >= 2 else t.abs().sum().reshape(1)


def _hyper(grad: torch.Tensor, offset: torch.Tensor, norms: torch.Tensor) -> float:
    """``sum_r <grad_r, c_r> / n_r``: every row, as the reference does."""
    rows = len(norms)
    return float(((grad.reshape(rows, -1) * offset.reshape(rows, -1)).sum(1) / norms).sum())


@pytest.mark.parametrize("k", [1.0, 0.3, 0.0])
def test_radius_trajectory_follows_the_formulas(k: float) -> None:
    """A mirror Adam gives each step's candidate; the radius and weights follow from it."""
    torch.manual_seed(0)
    model = TwoParts()
    w0 = {n: p.detach().clone() for n, p in model.body.named_parameters()}
    opt = FTP(model.parameters(), lr=1e-2, exclude=model.head.parameters(), k=k)
    mirror = TwoParts()
    mirror_opt = torch.optim.Adam(mirror.body.parameters(), lr=1e-2)
    radii = torch.full((2,), 1e-8, dtype=torch.float64)
    m = torch.zeros(2, dtype=torch.float64)
    v = torch.zeros(2, dtype=torch.float64)
    previous: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for t in range(1, 9):
        x, z, y = _batch(t)
        with torch.no_grad():
            for mp, p in zip(mirror.body.parameters(), model.body.parameters(), strict=True):
                mp.copy_(p)
        opt.zero_grad()
        model.loss(x, z, y).backward()
        mirror_opt.zero_grad()
        mirror.loss(x, z, y).backward()
        names = [n for n, _ in model.body.named_parameters()]
        grads = [p.grad.detach().clone() for p in model.body.parameters()]  # type: ignore[union-attr]
        opt.step()
        mirror_opt.step()
        candidates = {n: p.detach() - w0[n] for n, p in mirror.body.named_parameters()}
        norms = {n: _row_l1(c) + 1e-8 for n, c in candidates.items()}
        if t > 1:
            h = torch.tensor(
                [_hyper(g, *previous[n]) for n, g in zip(names, grads, strict=True)],
                dtype=torch.float64,
            )
            h = torch.where(h > 0, h * k, h)
            m = 0.9 * m + 0.1 * h
            v = 0.999 * v + 0.001 * h * h
            step = (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
            new = radii - 1e-2 * step
            if k == 0:
                assert (new >= radii - 1e-12).all(), "k = 0: a radius never shrinks by its update"
            radii = new
        largest = torch.tensor([float(norms[n].max()) for n in names], dtype=torch.float64)
        radii = torch.minimum(radii.clamp(min=1e-8), largest)
        torch.testing.assert_close(opt.radii.double(), radii, rtol=1e-5, atol=1e-9)
        for (name, p), r in zip(model.body.named_parameters(), radii.tolist(), strict=True):
            scale = torch.clamp(r / norms[name], max=1.0)
            expected = w0[name] + scale.reshape(-1, *[1] * (p.dim() - 1)) * candidates[name]
            torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)
        previous = {n: (candidates[n], norms[n]) for n in names}


def test_hypergradient_is_the_derivative_of_the_loss_along_the_radius() -> None:
    """``h = dL/dg`` of ``L(W0 + (g / n) c)`` when every row is outside the ball."""
    torch.manual_seed(1)
    layer = nn.Linear(6, 4, bias=False)
    w0 = layer.weight.detach().clone()
    opt = FTP(layer.parameters(), lr=1e-2)
    x, y = torch.randn(16, 6), torch.randn(16, 4)
    mirror = torch.optim.Adam([nn.Parameter(w0.clone())], lr=1e-2)
    opt.zero_grad()
    F.mse_loss(layer(x), y).backward()
    mirror.param_groups[0]["params"][0].grad = layer.weight.grad.clone()  # type: ignore[union-attr]
    opt.step()
    mirror.step()
    c = mirror.param_groups[0]["params"][0].detach() - w0
    n = c.abs().sum(1) + 1e-8
    opt.zero_grad()
    F.mse_loss(layer(x), y).backward()
    g = opt.radii[0].detach().double().requires_grad_()
    w = w0.double() + (g / n.double()).unsqueeze(1) * c.double()
    F.mse_loss(x.double() @ w.T, y.double()).backward()
    assert (opt.radii[0] < n).all(), "every row is outside the ball"
    torch.testing.assert_close(opt.hypergradient()[0].double(), g.grad, rtol=1e-4, atol=1e-9)


def test_a_radius_that_never_binds_is_plain_adam_bit_for_bit() -> None:
    """A loss that keeps pushing outwards: the radius grows faster than any row's norm."""
    torch.manual_seed(2)
    layer = nn.Linear(4, 3)
    plain = nn.Linear(4, 3)
    plain.load_state_dict(layer.state_dict())
    direction = torch.randn(3, 4)
    opt = FTP(layer.parameters(), lr=1e-4, first_radius=1e9, radius_lr=1e-2)
    reference = torch.optim.Adam(plain.parameters(), lr=1e-4)
    for _ in range(20):
        for module, optimizer in ((layer, opt), (plain, reference)):
            optimizer.zero_grad()
            (-(module.weight * direction).sum() - module.bias.sum()).backward()
            optimizer.step()
        assert torch.equal(layer.weight, plain.weight)
        assert torch.equal(layer.bias, plain.bias)


@pytest.mark.parametrize("base", ["adam", "sgd"])
def test_excluded_tensors_follow_the_plain_optimiser_bit_for_bit(base: str) -> None:
    torch.manual_seed(3)
    model, plain = TwoParts(), TwoParts()
    plain.load_state_dict(model.state_dict())
    opt = FTP(model.parameters(), base, lr=1e-2, exclude=model.head.parameters())  # type: ignore[arg-type]
    cls = torch.optim.Adam if base == "adam" else torch.optim.SGD
    reference = cls(plain.head.parameters(), lr=1e-2)
    for t in range(5):
        for module, optimizer in ((model, opt), (plain, reference)):
            optimizer.zero_grad()
            module.loss(*_batch(t)).backward()
            optimizer.step()
        assert torch.equal(model.head.weight, plain.head.weight)
        assert torch.equal(model.head.bias, plain.head.bias)
    assert len(opt.constrained_params) == 2


def test_every_tensor_stays_within_its_radius() -> None:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 3))
    w0 = [p.detach().clone() for p in model.parameters()]
    opt = FTP(model.parameters(), lr=1e-2, exclude=model[3].parameters())
    x, y = torch.randn(8, 3, 6, 6), torch.randint(0, 3, (8,))
    for _ in range(15):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        for p, r in zip(opt.constrained_params, opt.radii.tolist(), strict=True):
            start = next(a for a, q in zip(w0, model.parameters(), strict=True) if q is p)
            assert float(_row_l1(p.detach() - start).max()) <= r * (1 + 1e-5) + 1e-7


def test_a_parameter_without_gradient_corrupts_nothing() -> None:
    torch.manual_seed(5)
    model = TwoParts()
    opt = FTP(model.parameters(), lr=1e-2)
    _train(model, opt, steps=3)
    before = [p.detach().clone() for p in model.parameters()]
    radii = opt.radii.clone()
    opt.zero_grad(set_to_none=True)
    model.body(torch.randn(2, 5)).sum().backward()  # the head gets no gradient
    opt.step()
    head = [
        i
        for i, p in enumerate(opt.constrained_params)
        if p is model.head.weight or p is model.head.bias
    ]
    assert torch.equal(opt.radii[head], radii[head])
    assert torch.equal(model.head.weight, before[2])
    assert torch.equal(model.head.bias, before[3])
    opt.zero_grad()
    model.loss(*_batch(9)).backward()
    opt.step()
    assert torch.isfinite(opt.radii).all()


def test_wrapped_model_keeps_its_head_free_by_identity() -> None:
    inner = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    wrapped = nn.DataParallel(inner)  # names become module.0.weight ...
    opt = FTP(wrapped.parameters(), lr=1e-3, exclude=inner[1].parameters())
    assert {id(p) for p in opt.constrained_params} == {id(p) for p in inner[0].parameters()}


def test_state_dict_round_trips() -> None:
    torch.manual_seed(6)
    model = TwoParts()
    opt = FTP(model.parameters(), lr=1e-2)
    _train(model, opt, steps=3)
    copy = TwoParts()
    copy.load_state_dict(model.state_dict())
    other = FTP(copy.parameters(), lr=1e-2)
    other.rows.blocks[:] = opt.rows.blocks  # the same W0
    other.load_state_dict(copy_module.deepcopy(opt.state_dict()))  # tensors are shared otherwise
    for module, optimizer in ((model, opt), (copy, other)):
        optimizer.zero_grad()
        module.loss(*_batch(7)).backward()
        optimizer.step()
    assert torch.equal(opt.radii, other.radii)
    assert all(
        torch.equal(a, b) for a, b in zip(model.parameters(), copy.parameters(), strict=True)
    )


@pytest.mark.parametrize(
    ("key", "value"), [("k", 1.5), ("k", -0.1), ("radius_lr", -1.0), ("first_radius", 0.0)]
)
def test_bad_settings_are_refused(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=key):
        FTP(nn.Linear(2, 2).parameters(), **{key: value})  # type: ignore[arg-type]


def test_tether_convention_holds_batchnorm_through_its_live_diagonal() -> None:
    """BatchNorm's scale is constrained as ``gamma / sqrt(running_var + 1e-6)``, whose running
    variance moves every training step; biases and shifts stay free."""
    torch.manual_seed(7)
    conv, norm = nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4)
    model = nn.Sequential(conv, norm, nn.Flatten(), nn.Linear(64, 3))
    groups = LayerGroups({"body": ("0", "1"), "head": ("3",)})
    tensors = constrained_tensors(model, groups, head="3", convention="tether")
    assert [(t.layout, t.multiplier is not None) for t in tensors] == [
        ("rows", False),
        ("elements", True),
    ]
    assert norm.running_var is not None
    w0, g0 = conv.weight.detach().clone(), norm.weight.detach().clone()
    var0 = norm.running_var.clone()
    opt = FTP(
        model.parameters(), lr=5e-2, constrained=[(t.param, t.layout) for t in tensors],
        multipliers=[t.multiplier for t in tensors], radius_lr=5e-2,
    )  # fmt: skip
    x, y = torch.randn(16, 3, 6, 6) * 3 + 1, torch.randint(0, 3, (16,))
    bias = norm.bias.detach().clone()
    for _ in range(12):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        conv_radius, norm_radius = opt.radii.tolist()
        var = norm.running_var
        diagonal = norm.weight.detach() / (var + 1e-6).sqrt() - g0 / (var0 + 1e-6).sqrt()
        # float32 rounding of gamma = d / m around |d| ~ 1: a few 1e-7
        assert float(diagonal.abs().max()) <= norm_radius * (1 + 1e-5) + 1e-6
        rows = (conv.weight.detach() - w0).abs().flatten(1).sum(1)
        assert float(rows.max()) <= conv_radius * (1 + 1e-5) + 1e-7
    assert not torch.equal(norm.bias.detach(), bias), "the shift trains freely"
    assert not torch.equal(norm.running_var, var0), "the variance moved: the test means it"
