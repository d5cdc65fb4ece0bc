"""Euclidean projection onto l1 balls: ``project_rows_l1`` and ``mode="exact"``, by properties."""

from __future__ import annotations

import math
import random

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import pytest
import torch
from torch import nn

from tether.finetune.regularizers import DistanceConstraint
from tether.finetune.regularizers import project_rows_l1


def bisection(v: list[float], r: float) -> list[float]:
    """The l1-ball projection by bisection on the threshold theta (pure Python, float64)."""
    if sum(abs(x) for x in v) <= r:
        return list(v)
    lo, hi = 0.0, max(abs(x) for x in v)
    for _ in range(200):
        mid = (lo + hi) / 2
        if sum(max(abs(x) - mid, 0.0) for x in v) > r:
            lo = mid
        else:
            hi = mid
    theta = (lo + hi) / 2
    return [math.copysign(max(abs(x) - theta, 0.0), x) for x in v]


def _l1(v: list[float]) -> float:
    return sum(abs(x) for x in v)


def _dist(a: list[float], b: list[float]) -> float:
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))


def _feasible_points(v: list[float], w: list[float], r: float, seed: int) -> list[list[float]]:
    """Random points of the ball, points near ``w`` pulled inside, and the radial rescaling."""
    rng = random.Random(seed)
    out: list[list[float]] = []
    n1 = _l1(v)
    if n1 > 0:
        out.append([x * min(1.0, r / n1) for x in v])
    for k in range(40):
        if k % 2:
            p = [rng.gauss(0, 1) for _ in v]
            target = r * rng.random()
        else:
            p = [x + rng.gauss(0, 1e-3) for x in w]
            target = r
        norm = _l1(p)
        if norm > target and norm > 0:
            p = [x * target / norm for x in p]
        out.append(p)
    return out


values = st.floats(-10.0, 10.0, allow_nan=False, allow_infinity=False, width=64)
radii = st.floats(0.1, 5.0, allow_nan=False, width=64)


@st.composite
def rows_and_radii(draw: st.DrawFn) -> tuple[list[list[float]], list[float]]:
    length = draw(st.integers(1, 6))
    count = draw(st.integers(1, 4))
    rows = [draw(st.lists(values, min_size=length, max_size=length)) for _ in range(count)]
    return rows, [draw(radii) for _ in range(count)]


@settings(max_examples=300, deadline=None)
@given(data=rows_and_radii(), seed=st.integers(0, 2**16))
def test_project_rows_l1_is_the_euclidean_projection(
    data: tuple[list[list[float]], list[float]], seed: int
) -> None:
    rows, rs = data
    out = project_rows_l1(
        torch.tensor(rows, dtype=torch.float64), torch.tensor(rs, dtype=torch.float64)
    )
    assert out.shape == (len(rows), len(rows[0]))
    assert out.dtype == torch.float64
    for v, r, w_tensor in zip(rows, rs, out, strict=True):
        w = w_tensor.tolist()
        assert _l1(w) <= r * (1 + 1e-9) + 1e-12
        if _l1(v) <= r:
            assert w == v  # inside: returned unchanged, bit for bit
        expected = bisection(v, r)
        assert w == pytest.approx(expected, abs=1e-6)
        if _l1(v) > r:
            assert _l1(w) == pytest.approx(r, rel=1e-9)  # on the surface
        best = _dist(w, v)
        for p in _feasible_points(v, w, r, seed):
            assert best <= _dist(p, v) + 1e-9


def test_project_rows_l1_examples() -> None:
    out = project_rows_l1(torch.tensor([[3.0, -1.0], [0.5, 0.25]]), torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(out, torch.tensor([[2.0, 0.0], [0.5, 0.25]]))
    # ties: 1,1,1 onto radius 1.5 -> each 0.5
    tie = project_rows_l1(torch.tensor([[1.0, -1.0, 1.0]]), torch.tensor([1.5]))
    torch.testing.assert_close(tie, torch.tensor([[0.5, -0.5, 0.5]]))
    empty = torch.zeros(0, 3)
    assert project_rows_l1(empty, torch.zeros(0)).shape == (0, 3)


@settings(max_examples=60, deadline=None)
@given(data=rows_and_radii())
def test_exact_mode_projects_each_row_onto_its_l1_ball_around_w0(
    data: tuple[list[list[float]], list[float]],
) -> None:
    rows, _ = data
    r = 1.5
    n_out, length = len(rows), len(rows[0])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(length, n_out, bias=False), nn.Linear(n_out, 2))
    w0 = model.get_parameter("0.weight").detach().clone()
    constraint = DistanceConstraint(
        model, norm="mars", radius=r, head_radius=1e6, head="1", mode="exact"
    )
    offset = torch.tensor(rows, dtype=torch.float32)
    with torch.no_grad():
        model.get_parameter("0.weight").add_(offset)
    t = (
        model.get_parameter("0.weight").detach() - w0
    ).double()  # the offset as float32 actually stored it
    constraint.project_()
    after = (model.get_parameter("0.weight").detach() - w0).double()
    for j in range(n_out):
        expected = bisection(t[j].tolist(), r)
        assert after[j].tolist() == pytest.approx(expected, abs=2e-5)
        assert float(after[j].abs().sum()) <= r * (1 + 1e-5) + 1e-5
    assert constraint.distances()["extractor"] <= r * (1 + 1e-5) + 1e-5


def test_exact_differs_from_rescale_and_is_closer() -> None:
    """On a row outside its ball, soft-thresholding beats the radial rescaling."""
    results = {}
    for mode in ("rescale", "exact"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 1, bias=False), nn.Linear(1, 2))
        w0 = model.get_parameter("0.weight").detach().clone()
        constraint = DistanceConstraint(
            model,
            norm="mars",
            radius=1.0,
            head_radius=1e6,
            head="1",
            mode=mode,
        )
        with torch.no_grad():
            model.get_parameter("0.weight").add_(torch.tensor([[3.0, -1.0, 0.5, 0.0]]))
        constraint.project_()
        results[mode] = (model.get_parameter("0.weight").detach() - w0).double()[0]
    target = torch.tensor([3.0, -1.0, 0.5, 0.0], dtype=torch.float64)
    torch.testing.assert_close(results["exact"], torch.tensor([1.0, 0.0, 0.0, 0.0]).double(),
                               atol=1e-6, rtol=0)  # fmt: skip
    torch.testing.assert_close(results["rescale"], target / 4.5, atol=1e-6, rtol=0)
    assert (results["exact"] - target).norm() < (results["rescale"] - target).norm()


def test_exact_equals_rescale_for_frobenius() -> None:
    out = []
    for mode in ("rescale", "exact"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(1, 2))
        constraint = DistanceConstraint(
            model,
            norm="frob",
            radius=0.3,
            head_radius=1e6,
            head="2",
            mode=mode,
        )
        with torch.no_grad():
            model.get_parameter("0.weight").add_(
                torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(1))
            )
        constraint.project_()
        out.append(model.get_parameter("0.weight").detach().clone())
    assert torch.equal(out[0], out[1])
