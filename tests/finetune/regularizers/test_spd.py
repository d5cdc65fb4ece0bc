"""SPD against reference/learned-radii.md: the reduction cases and the decay, by hand."""

from __future__ import annotations

import copy as copy_module

import pytest
import torch
from torch import nn

from tether.errors import ConfigError
from tether.finetune.regularizers._spd import SPD


def _pair(seed: int) -> tuple[nn.Linear, nn.Linear]:
    torch.manual_seed(seed)
    a, b = nn.Linear(6, 4), nn.Linear(6, 4)
    b.load_state_dict(a.state_dict())
    return a, b


def _loss(layer: nn.Linear, step: int) -> torch.Tensor:
    """Separate terms for weight and bias: each one's gradient ignores the other."""
    g = torch.Generator().manual_seed(step)
    x, y = torch.randn(8, 6, generator=g), torch.randn(8, 4, generator=g)
    return (x @ layer.weight.T - y).square().mean() + (layer.bias - y).square().mean()


def test_lam_zero_is_adam_bit_for_bit() -> None:
    layer, plain = _pair(0)
    spd = SPD(layer.parameters(), lr=1e-2, lam=0.0)
    adam = torch.optim.Adam(plain.parameters(), lr=1e-2)
    for t in range(6):
        for module, opt in ((layer, spd), (plain, adam)):
            opt.zero_grad()
            _loss(module, t).backward()
            opt.step()
    assert torch.equal(layer.weight, plain.weight)
    assert torch.equal(layer.bias, plain.bias)


def _displaced(lam: float, sign: float) -> tuple[nn.Parameter, nn.Parameter, SPD, torch.Tensor]:
    """A weight moved by ``d`` from its anchor, and a gradient ``sign * d`` on it."""
    torch.manual_seed(1)
    w = nn.Parameter(torch.randn(3, 4))
    plain = nn.Parameter(w.detach().clone())
    spd = SPD([w], lr=2.0, lam=lam)
    d = torch.tensor([[1.0, 0.01, 0.0, 0.0]]).repeat(3, 1)
    with torch.no_grad():
        w.add_(d)
        plain.add_(d)
    gradient = sign * torch.tensor([[0.02, -1.0, 0.0, 0.0]]).repeat(3, 1)
    w.grad = gradient.clone()
    plain.grad = gradient.clone()
    return w, plain, spd, d


def test_a_step_that_does_not_fight_the_deviation_is_plain_adam() -> None:
    w, plain, spd, _ = _displaced(lam=1.0, sign=-1.0)  # <-grad, W - W0> > 0
    spd.step()
    torch.optim.Adam([plain], lr=2.0).step()
    assert torch.equal(w, plain)


@pytest.mark.parametrize("lam", [1.0, 0.5])
def test_a_fighting_step_that_grows_the_deviation_is_decayed(lam: float) -> None:
    w, plain, spd, d = _displaced(lam=lam, sign=1.0)  # <-grad, W - W0> < 0
    anchor = w.detach() - d
    spd.step()
    torch.optim.Adam([plain], lr=2.0).step()
    after = plain.detach() - anchor
    old, new = d.norm(), after.norm()
    assert new > old, "the case needs an Adam step that grows the deviation"
    r = torch.clamp((new - old) / new, 0, 1)
    torch.testing.assert_close(w.detach(), plain.detach() - lam * r * after)
    if lam == 1.0:
        torch.testing.assert_close((w.detach() - anchor).norm(), old)


def test_the_head_takes_plain_adam_and_zero_anchor_measures_from_zero() -> None:
    layer, plain = _pair(2)
    spd = SPD([layer.weight, layer.bias], lr=1e-1, lam=1.0, exclude=[layer.bias], anchor="zero")
    adam = torch.optim.Adam([plain.bias], lr=1e-1)
    assert spd.anchors is None
    for t in range(4):
        for module, opt in ((layer, spd), (plain, adam)):
            opt.zero_grad()
            _loss(module, t).backward()
            opt.step()
        assert torch.equal(layer.bias, plain.bias)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"lam": -0.1}, "lam"), ({"anchor": "w0"}, "anchor"), ({"weight_decay": 0.1}, "decay")],
)
def test_bad_settings_are_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SPD(nn.Linear(2, 2).parameters(), **kwargs)  # type: ignore[arg-type]


def test_a_loaded_state_keeps_the_scheduler_and_the_adam_step_together() -> None:
    layer, copy = _pair(3)
    spd = SPD(layer.parameters(), lr=1e-2, lam=0.5)
    for t in range(2):
        spd.zero_grad()
        _loss(layer, t).backward()
        spd.step()
    other = SPD(copy.parameters(), lr=1e-2, lam=0.5)
    other.load_state_dict(copy_module.deepcopy(spd.state_dict()))
    other.param_groups[0]["lr"] = 0.5  # what a scheduler does
    assert other.base.param_groups[0]["lr"] == 0.5
    assert other.base.state is other.state
