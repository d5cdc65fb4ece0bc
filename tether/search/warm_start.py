"""Warm start: the radii a learning method found become a searching method's first trial.

FTP and TPGM learn one radius per tensor while they train, and their worker reports it per
layer group in a MARS-PGM's units (``learned_radii``: absolute, and relative to the mean
pretrained row l1 norm). A constraint method whose spec entry says ``warm_start: ftp`` starts
its search from the radii of ftp's best trial, converted to its own parameters::

    groups        parameters
    independent   radius.<g> = the radius learned for group g
    shared        radius = the largest one (the one ball that holds every group)
    geometric     radius * scale**depth through the first and the last group's radii
                  (scale: the geometric mean of the ratios between consecutive groups)

plus ``head_radius`` = the distance the new head moved (``distances.head``), ``lr`` = the
source's when both methods search it, and ``norm: mars`` for ``pgm``. Units: relative or
absolute as the target's ``relative`` option (else its recipe) says. A value outside the
space is clipped into it (:meth:`~tether.search.space.Param.nearest`) and the clipping is
told, so the first trial is always one the sampler could have proposed.

Example:
    >>> from tether.search.space import FloatRange, MethodSpace
    >>> ranges = {"radius": (0.01, 1.0), "scale": (1.0, 4.0), "head_radius": (1.0, 10.0)}
    >>> params = {name: FloatRange(*ends) for name, ends in ranges.items()}
    >>> space = MethodSpace("mars-pgm", params, groups="geometric")
    >>> learned = Learned({"absolute": {"a": 0.1, "b": 0.2, "c": 0.4}}, head=12.0)
    >>> start = warm_start_params(space, learned, groups=["a", "b", "c"], relative=False)
    >>> start.params
    {'radius': 0.1, 'scale': 2.0, 'head_radius': 10.0}
    >>> start.clipping()
    'clipped into the spec: head_radius 12 -> 10'
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Any

from tether.search.methods import GROUP_PREFIX
from tether.search.methods import GroupMode
from tether.search.space import MethodSpace


if TYPE_CHECKING:
    from optuna.trial import FrozenTrial


@dataclass(frozen=True)
class Learned:
    """What one radius-learning trial found.

    Attributes:
        radii: the worker's ``learned_radii``: ``{"absolute": {group: r}, "relative": {...}}``.
        head: the largest MARS distance of the new head from zero (``distances.head``).
        lr: the trial's learning rate, where it searched one.
    """

    radii: Mapping[str, Mapping[str, float]]
    head: float | None = None
    lr: float | None = None

    @classmethod
    def of_trial(cls, trial: FrozenTrial) -> Learned | None:
        """What ``trial`` learned (its user attributes), or None if it reported no radii."""
        radii = trial.user_attrs.get("learned_radii")
        if not radii:
            return None
        head = (trial.user_attrs.get("distances") or {}).get("head")
        lr = trial.params.get("lr")
        return cls(radii, head=None if head is None else float(head), lr=lr)


@dataclass(frozen=True)
class WarmStart:
    """A first trial: its Optuna parameters, and those clipped into the space (from, to)."""

    params: dict[str, Any]
    clipped: dict[str, tuple[float, Any]]

    def clipping(self) -> str:
        """The clipped values in words; empty when nothing was clipped."""
        if not self.clipped:
            return ""
        moves = ", ".join(f"{k} {v:.3g} -> {to:.3g}" for k, (v, to) in self.clipped.items())
        return f"clipped into the spec: {moves}"


def warm_start_params(
    space: MethodSpace, learned: Learned, *, groups: Sequence[str], relative: bool
) -> WarmStart:
    """The first trial of ``space`` from the radii ``learned`` (see the module docstring).

    Args:
        space: the warm-started method's search space.
        learned: what the source's best trial learned.
        groups: the model's pretrained layer groups, input side first (a group the source
            reported no radius for is left to the sampler).
        relative: read the relative radii (else the absolute ones).
    """
    radii = learned.radii["relative" if relative else "absolute"]
    wanted = radius_params(space.groups, radii, groups)
    if learned.head is not None:
        wanted["head_radius"] = learned.head
    if learned.lr is not None:
        wanted["lr"] = learned.lr
    params: dict[str, Any] = {}
    clipped: dict[str, tuple[float, Any]] = {}
    for name, value in wanted.items():
        param = space.param_for(name)
        if param is None:  # lr, where this space does not search it
            continue
        params[name] = param.nearest(value)
        if params[name] != value:
            clipped[name] = (value, params[name])
    if "norm" in space.params:
        params["norm"] = "mars"
    return WarmStart(params, clipped)


def radius_params(
    layout: GroupMode, radii: Mapping[str, float], groups: Sequence[str]
) -> dict[str, float]:
    """The radius parameters of a ``layout`` that give (or hold, for ``shared``) ``radii``.

    Example:
        >>> radius_params("independent", {"a": 0.1, "b": 0.3}, ["a", "b"])
        {'radius.a': 0.1, 'radius.b': 0.3}
        >>> radius_params("shared", {"a": 0.1, "b": 0.3}, ["a", "b"])
        {'radius': 0.3}
    """
    known = [(depth, radii[g]) for depth, g in enumerate(groups) if g in radii]
    if not known:
        return {}
    if layout == "independent":
        return {GROUP_PREFIX + g: radii[g] for g in groups if g in radii}
    if layout == "shared":
        return {"radius": max(r for _, r in known)}
    (first, r_first), (last, r_last) = known[0], known[-1]
    scale = (r_last / r_first) ** (1 / (last - first)) if last > first else 1.0
    return {"radius": r_first / scale**first, "scale": scale}
