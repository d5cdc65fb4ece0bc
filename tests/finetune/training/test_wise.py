"""WiSE-FT: the two ends, linearity, integer buffers, the kept head, the choice on val."""

from __future__ import annotations

import torch
from torch import nn

from tether.finetune.training import wise


def _model(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    norm = nn.BatchNorm1d(4)
    assert norm.running_mean is not None
    assert norm.num_batches_tracked is not None
    norm.running_mean.normal_()
    norm.num_batches_tracked.fill_(seed + 5)
    return nn.Sequential(nn.Linear(3, 4), norm, nn.Linear(4, 2))


def test_the_ends_are_the_two_models_and_the_head_is_kept() -> None:
    start, end = _model(0).state_dict(), _model(1).state_dict()
    at0 = wise.interpolate(start, end, 0.0, keep=["2"])
    at1 = wise.interpolate(start, end, 1.0, keep=["2"])
    for key in end:
        assert torch.equal(at1[key], end[key])
        if key.startswith("2.") or not end[key].is_floating_point():
            assert torch.equal(at0[key], end[key]), key
        else:
            assert torch.equal(at0[key], start[key]), key
    assert int(at0["1.num_batches_tracked"]) == 6


def test_interpolation_is_linear_in_alpha() -> None:
    start, end = _model(0).state_dict(), _model(1).state_dict()
    half = wise.interpolate(start, end, 0.5)
    for key in ("0.weight", "1.running_mean", "2.bias"):
        torch.testing.assert_close(half[key], (start[key] + end[key]) / 2)


def test_choose_loads_the_best_coefficient_first_among_equals() -> None:
    model = _model(1)
    start = _model(0).state_dict()
    tried: list[float] = []

    def score() -> float:
        alpha = wise.GRID[len(tried)]
        tried.append(alpha)
        return 1.0 - abs(alpha - 0.3) if alpha < 0.75 else 0.7  # 0.3 best; 1.0 ties 0.0

    end = wise.snapshot(model)
    alpha, scores = wise.choose(model, start, keep=["2"], score=score)
    assert alpha == 0.3
    assert list(scores) == list(wise.GRID)
    expected = wise.interpolate(start, end, 0.3, keep=["2"])
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
