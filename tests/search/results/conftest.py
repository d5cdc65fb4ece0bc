"""Studies as a finished search leaves them, made by hand: trials with the user attributes a
worker writes and the evaluation attribute ``tether evaluate`` writes, nothing trained."""

from __future__ import annotations

from collections.abc import Sequence
import statistics
from typing import Any

import optuna
from optuna.distributions import FloatDistribution

from tests.conftest import ROOT
from tether.search.results.evaluate import EVALUATION_ATTR
from tether.search.spec import StudySpec
from tether.search.spec import specs_from_dict
from tether.testing.specs import TWO_METHODS
from tether.testing.specs import tiny_digits_spec


THREE_METHODS: dict[str, Any] = {
    **TWO_METHODS,
    "l2-sp": {"alpha": {"low": 1e-4, "high": 1.0}, "beta": {"low": 1e-4, "high": 1.0}},
}
"""Standard, MARS-PGM and L2-SP: a baseline, a method that beats it, and one left unevaluated."""


def make_specs(name: str = "t", **changes: Any) -> list[StudySpec]:
    """The tiny digits spec with :data:`THREE_METHODS` (one spec per condition, if any)."""
    data = tiny_digits_spec(name, recipe="digits.yaml", methods=THREE_METHODS, **changes)
    return specs_from_dict(data, root=str(ROOT / "configs"))


def evaluation(
    scores: Sequence[float | None],
    *,
    seeds: Sequence[int] | None = None,
    seconds: float = 0.0,
    best_trial: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """The evaluation attribute for ``scores`` (None: that seed's run failed) of ``seeds``
    (default 0..n-1), with the summary ``tether evaluate`` stores beside them."""
    done = [s for s in scores if s is not None]
    return {
        "best_trial": best_trial,
        "seeds": list(range(len(scores)) if seeds is None else seeds),
        "test_accuracy": list(scores),
        "recovered": [None] * len(scores),
        "recovered_mean": None,
        "mean": statistics.mean(done) if done else None,
        "std": statistics.stdev(done) if len(done) > 1 else 0.0 if done else None,
        "seconds": seconds,
        "device": device,
    }


def add_study(
    storage: optuna.storages.BaseStorage,
    spec: StudySpec,
    method: str,
    *,
    values: Sequence[float] = (0.5,),
    seconds: Sequence[float] | None = None,
    devices: Sequence[str] | None = None,
    evaluated: dict[str, Any] | None = None,
) -> optuna.Study:
    """The study of ``spec``'s ``method``: one complete trial per value of ``values`` (its
    param ``radius`` the same value), with ``seconds`` and ``devices`` (default 1.0 and cpu)
    as user attributes, and the ``evaluated`` attribute if given."""
    study = optuna.create_study(
        study_name=spec.study_name(method), storage=storage, direction="maximize"
    )
    for i, value in enumerate(values):
        study.add_trial(
            optuna.trial.create_trial(
                value=value,
                params={"radius": value},
                distributions={"radius": FloatDistribution(0.0, 1.0)},
                user_attrs={
                    "seconds": 1.0 if seconds is None else seconds[i],
                    "device": "cpu" if devices is None else devices[i],
                },
            )
        )
    if evaluated is not None:
        study.set_user_attr(EVALUATION_ATTR, evaluated)
    return study
