"""The final evaluation: each method's best configuration, re-run for several seeds on test.

Every method gets the same data, budget and protocol: the recipe of its best trial (highest
validation accuracy) is run ``evaluation.n_seeds`` times with ``train.seed`` and
``data.seed`` = 0..n-1, refit on train+val when the spec says so, and scored on the test
split. The runs go through the same worker processes and slots as the search, and the
result is stored on the method's study (user attribute ``tether:evaluation``). Each repeat of a
search (``budget.repeats``) is a spec of its own, its winner evaluated on the same seeds: the
repeats differ in the configuration their search chose, not in the seeds.

A refit trains on the validation split, so it cannot choose on it: what the best trial chose
there is fixed instead (:func:`refit_recipe`), LP-FT's probe ``C`` and WiSE-FT's coefficient.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
import concurrent.futures
from dataclasses import dataclass
from pathlib import Path
import queue
import statistics
import sys
import time
from typing import Any

import optuna

from tether.jsondata import deep_copy
from tether.progress import progress
from tether.search.execution.launcher import Launcher
from tether.search.execution.slots import Slot
from tether.search.execution.studies import best_trial
from tether.search.execution.studies import load_studies
from tether.search.execution.trials import log_folder
from tether.search.spec import StudySpec


EVALUATION_ATTR = "tether:evaluation"


@dataclass(frozen=True)
class SeedRun:
    """One evaluation run; ``recovered`` is the share of corrupted labels that self
    label-correction put right (``None`` without correction or without injected noise)."""

    seed: int
    test_accuracy: float | None
    seconds: float
    error: str | None = None
    recovered: float | None = None


def best_recipe(study: optuna.Study, *, refit: bool) -> tuple[int, dict[str, Any]]:
    """The number and recipe of the best complete trial (:func:`best_trial`); for a refit,
    with what it chose on val fixed (:func:`refit_recipe`).

    Raises:
        LookupError: no trial is complete.
        ValueError: the best trial kept no choice that a refit must fix.
    """
    best = best_trial(study)
    if best is None:
        raise LookupError("no complete trial")
    recipe = best.user_attrs["recipe"]
    try:
        return best.number, refit_recipe(recipe, best.user_attrs) if refit else deep_copy(recipe)
    except ValueError as error:
        raise ValueError(f"best trial {best.number} {error}") from None


def refit_recipe(recipe: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """``recipe`` with what its trial chose on val (``attrs``: its user attributes) fixed.

    ``train.probe_c`` from the trial's ``probe.c`` when the probe chose C, ``train.wise``
    from its ``wise.alpha`` when WiSE-FT chose the coefficient.

    Raises:
        ValueError: the trial kept no such choice (it ran before trials kept them).

    Example:
        >>> recipe = {"train": {"linear_probe": True, "probe_c": None, "wise": "val"}}
        >>> refit_recipe(recipe, {"probe": {"c": 0.5}, "wise": {"alpha": 0.7}})["train"]
        {'linear_probe': True, 'probe_c': 0.5, 'wise': 0.7}
    """
    out: dict[str, Any] = deep_copy(dict(recipe))
    train = out["train"]
    if train.get("linear_probe") and train.get("probe_c") is None:
        train["probe_c"] = _chosen(attrs, "probe", "c")
    if train.get("wise") == "val":
        train["wise"] = _chosen(attrs, "wise", "alpha")
    return out


def _chosen(attrs: Mapping[str, Any], attr: str, key: str) -> float:
    value = (attrs.get(attr) or {}).get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"kept no {attr}.{key} (its choice on val, which a refit reuses)")
    return float(value)


def _seed_recipe(recipe: dict[str, Any], seed: int, *, refit: bool) -> dict[str, Any]:
    out: dict[str, Any] = deep_copy(recipe)
    out["train"].update(seed=seed, test=True, refit=refit)
    if refit:
        out["train"]["select"] = "last"
    out["data"]["seed"] = seed
    return out


def _run_one(
    recipe: dict[str, Any],
    seed: int,
    *,
    launcher: Launcher,
    slots: queue.Queue[Slot],
    log_path: Path,
    cache_dir: Path | None,
) -> SeedRun:
    slot = slots.get()
    started = time.monotonic()
    try:
        process = launcher.start(
            recipe, device=slot.visible_devices, log_path=log_path, cache_dir=cache_dir
        )
        result = error = None
        for event in process.events():
            if event.get("event") == "result":
                result = event
            elif event.get("event") == "error":
                error = f"{event.get('kind')}: {event.get('message')}"
        code = process.wait()
        seconds = time.monotonic() - started
        if result is None or code != 0:
            return SeedRun(seed, None, seconds, error or f"worker exited with code {code}")
        relabel = result.get("relabel") or {}
        recovered = relabel.get("recovered")
        return SeedRun(
            seed,
            float(result["test_accuracy"]),
            seconds,
            recovered=None if recovered is None else float(recovered),
        )
    finally:
        slots.put(slot)


def evaluate(
    spec: StudySpec,
    *,
    storage: optuna.storages.BaseStorage,
    launcher: Launcher,
    slots: Sequence[Slot],
    log_dir: Path,
    cache_dir: Path | None = None,
    methods: Sequence[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate each method's best configuration; store and return the summaries."""
    free: queue.Queue[Slot] = queue.Queue()
    for slot in slots:
        free.put(slot)
    summaries: dict[str, dict[str, Any]] = {}
    for method, study in load_studies(spec, storage, methods).items():
        n_seeds, refit = spec.evaluation.n_seeds, spec.evaluation.refit
        try:
            number, recipe = best_recipe(study, refit=refit)
        except (LookupError, ValueError) as error:
            print(f"[{study.study_name}] not evaluated: {error}", file=sys.stderr)
            continue
        method_dir = log_folder(log_dir, study.study_name)
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(slots)) as pool:
            futures = [
                pool.submit(
                    _run_one,
                    _seed_recipe(recipe, seed, refit=refit),
                    seed,
                    launcher=launcher,
                    slots=free,
                    log_path=method_dir / f"evaluate-seed{seed}.log",
                    cache_dir=cache_dir,
                )
                for seed in range(n_seeds)
            ]
            runs = [f.result() for f in futures]
        scores = [r.test_accuracy for r in runs if r.test_accuracy is not None]
        mean = statistics.mean(scores) if scores else None
        recovered = [r.recovered for r in runs if r.recovered is not None]
        summary: dict[str, Any] = {
            "best_trial": number,
            "recipe": recipe,
            "refit": refit,
            "seeds": [r.seed for r in runs],
            "test_accuracy": [r.test_accuracy for r in runs],
            "errors": [r.error for r in runs if r.error],
            "recovered": [r.recovered for r in runs],
            "recovered_mean": statistics.mean(recovered) if recovered else None,
            "mean": mean,
            "std": statistics.stdev(scores) if len(scores) > 1 else 0.0 if scores else None,
            "seconds": sum(r.seconds for r in runs),
            "device": slots[0].name,
        }
        study.set_user_attr(EVALUATION_ATTR, summary)
        summaries[method] = summary
        shown = "-" if mean is None else f"{100 * mean:.1f}%"
        progress(
            f"[{study.study_name}] test {shown} over {len(scores)}/{n_seeds} seeds "
            f"(best trial {number})"
        )
    return summaries
