"""Warm start: learned radii become a searching method's first trial, and come back out of it."""

from __future__ import annotations

import math

import optuna
import pytest

from tether.search.methods import GroupMode
from tether.search.space import Choice
from tether.search.space import FloatRange
from tether.search.space import MethodSpace
from tether.search.space import Param
from tether.search.warm_start import Learned
from tether.search.warm_start import radius_params
from tether.search.warm_start import warm_start_params


GROUPS = ["block1", "block2", "block3"]
LEARNED = Learned(
    {
        "absolute": {"block1": 0.02, "block2": 0.08, "block3": 0.32},
        "relative": {"block1": 0.003, "block2": 0.0011, "block3": 0.0007},
    },
    head=4.5,
    lr=3e-3,
)
"""What an FTP trial reports (``learned_radii``, ``distances.head``, its ``lr``)."""


def _space(groups: GroupMode, **params: Param) -> MethodSpace:
    ranges: dict[str, Param] = {
        "radius": FloatRange(1e-4, 1.0),
        "head_radius": FloatRange(1.0, 10.0),
        **params,
    }
    if groups == "geometric":
        ranges.setdefault("scale", FloatRange(0.1, 10.0))
    return MethodSpace("mars-pgm", ranges, groups=groups)


def _radii(space: MethodSpace, params: dict[str, float]) -> dict[str, float]:
    """The radius per group the recipe gets from ``params`` (what a trial would run)."""
    trial = optuna.trial.FixedTrial(params)
    constraint = space.suggest(trial, groups=GROUPS)["constraint"]
    radius, scale = constraint["radius"], constraint["scale"]
    if isinstance(radius, dict):
        return radius
    return {g: radius * (scale or 1.0) ** k for k, g in enumerate(GROUPS)}


@pytest.mark.parametrize("relative", [True, False])
def test_independent_radii_round_trip_exactly(relative: bool) -> None:
    space = _space("independent")
    start = warm_start_params(space, LEARNED, groups=GROUPS, relative=relative)
    units = LEARNED.radii["relative" if relative else "absolute"]
    assert _radii(space, start.params) == units
    assert start.params["head_radius"] == 4.5
    assert start.clipped == {}


def test_shared_radius_is_the_largest_learned_one() -> None:
    space = _space("shared")
    start = warm_start_params(space, LEARNED, groups=GROUPS, relative=False)
    assert start.params == {"radius": 0.32, "head_radius": 4.5}


def test_geometric_radii_pass_through_the_first_and_last_group() -> None:
    space = _space("geometric")
    start = warm_start_params(space, LEARNED, groups=GROUPS, relative=False)
    assert start.params["scale"] == pytest.approx(4.0)  # 0.02 -> 0.08 -> 0.32
    for group, radius in _radii(space, start.params).items():
        assert radius == pytest.approx(LEARNED.radii["absolute"][group])


def test_geometric_scale_is_the_mean_ratio_of_consecutive_groups() -> None:
    params = radius_params("geometric", {"a": 1.0, "b": 3.0, "c": 4.0}, ["a", "b", "c"])
    assert params == {"radius": 1.0, "scale": pytest.approx(math.sqrt(3.0 * 4.0 / 3.0))}
    assert radius_params("geometric", {"a": 0.5}, ["a"]) == {"radius": 0.5, "scale": 1.0}


def test_a_group_without_a_learned_radius_is_left_to_the_sampler() -> None:
    partial = {"block2": 0.1, "block3": 0.4}
    assert radius_params("independent", partial, GROUPS) == {"radius.block2": 0.1,
                                                             "radius.block3": 0.4}  # fmt: skip
    geometric = radius_params("geometric", partial, GROUPS)
    assert geometric["scale"] == pytest.approx(4.0)
    assert geometric["radius"] * geometric["scale"] == pytest.approx(0.1)  # block1 at depth 0
    assert radius_params("shared", {}, GROUPS) == {}


def test_values_outside_the_space_are_clipped_and_told() -> None:
    space = _space(
        "independent",
        radius=FloatRange(0.001, 0.002),
        head_radius=Choice((1.0, 3.0)),
        lr=FloatRange(1e-4, 1e-3),
    )
    start = warm_start_params(space, LEARNED, groups=GROUPS, relative=True)
    assert start.params == {
        "radius.block1": 0.002,
        "radius.block2": 0.0011,
        "radius.block3": 0.001,
        "head_radius": 3.0,
        "lr": 1e-3,
    }
    assert set(start.clipped) == {"radius.block1", "radius.block3", "head_radius", "lr"}
    assert start.clipping() == (
        "clipped into the spec: radius.block1 0.003 -> 0.002, radius.block3 0.0007 -> 0.001, "
        "head_radius 4.5 -> 3, lr 0.003 -> 0.001"
    )
    for name, value in start.params.items():
        assert space.param_for(name).contains(value), name  # type: ignore[union-attr]


def test_the_learning_rate_is_carried_only_where_the_space_searches_it() -> None:
    start = warm_start_params(_space("shared"), LEARNED, groups=GROUPS, relative=False)
    assert "lr" not in start.params
    searched = _space("shared", lr=FloatRange(1e-4, 1e-2))
    assert warm_start_params(searched, LEARNED, groups=GROUPS, relative=False).params["lr"] == 3e-3


def test_pgm_starts_on_the_mars_norm() -> None:
    space = MethodSpace("pgm", {**_space("shared").params, "norm": Choice(("frob", "mars"))})
    assert (
        warm_start_params(space, LEARNED, groups=GROUPS, relative=False).params["norm"] == "mars"
    )


def test_learned_reads_a_trial_and_none_without_radii() -> None:
    distributions: dict[str, optuna.distributions.BaseDistribution] = {
        "lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    }
    attrs = {"learned_radii": LEARNED.radii, "distances": {"block1": 0.2, "head": 4.5}}
    trial = optuna.trial.create_trial(
        params={"lr": 3e-3}, distributions=distributions, value=0.5, user_attrs=attrs
    )
    assert Learned.of_trial(trial) == LEARNED
    plain = optuna.trial.create_trial(params={}, distributions={}, value=0.5)
    assert Learned.of_trial(plain) is None
