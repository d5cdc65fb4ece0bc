"""Samplers and pruners by name (``sampler:`` and ``pruner:`` in a study spec).

Strings become Optuna objects here and nowhere else. A new sampler or pruner is one
``@register_sampler`` / ``@register_pruner`` function.

Seed policy: with ``seed: null`` every process draws its own random seed; with ``seed: S`` a
process with seed offset ``w`` uses ``S + w`` (``tether run``: 0, each ``tether worker``: its
own, below :data:`SEED_OFFSETS`), so parallel processes never share a seed and never propose the
same first points (Optuna's samplers page: "use either seed=None or different seed values among
processes"; optuna#4714). Repeat ``r`` of a search (``budget.repeats``) starts from
``S + r * SEED_OFFSETS`` (:func:`repeat_seed`), so its processes' seeds never meet another
repeat's either.
Optuna does not store samplers or pruners in its storage, so every worker rebuilds them from the
same spec.

Example:
    >>> type(make_sampler(SamplerConfig(name="tpe", seed=7), offset=1)).__name__
    'TPESampler'
    >>> type(make_pruner(PrunerConfig(name="hyperband"), epochs=30)).__name__
    'HyperbandPruner'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
import importlib.util

import optuna

from tether.errors import ConfigError
from tether.registry import Registry


SEED_MODULUS = 2**32
SEED_OFFSETS = 100_000
"""A process's seed offset is below this; the repeats of a search are this far apart."""


@dataclass(frozen=True)
class SamplerConfig:
    """``sampler:`` of a study spec: the algorithm and the base seed (``None``: random)."""

    name: str = "tpe"
    seed: int | None = None

    def __post_init__(self) -> None:
        _SAMPLERS.get(self.name, key="sampler.name")
        if self.seed is not None and self.seed < 0:
            raise ConfigError(f"sampler.seed must be >= 0 or null, got {self.seed!r}")


@dataclass(frozen=True)
class PrunerConfig:
    """``pruner:`` of a study spec. Steps are epochs.

    ``n_startup_trials`` and ``n_warmup_steps`` are the median pruner's: no pruning before that
    many trials have finished, nor before that epoch of a trial.
    """

    name: str = "median"
    n_startup_trials: int = 5
    n_warmup_steps: int = 0

    def __post_init__(self) -> None:
        _PRUNERS.get(self.name, key="pruner.name")
        for key in ("n_startup_trials", "n_warmup_steps"):
            value = getattr(self, key)
            if value < 0:
                raise ConfigError(f"pruner.{key} must be >= 0, got {value!r}")


SamplerBuilder = Callable[[int | None], optuna.samplers.BaseSampler]
PrunerBuilder = Callable[[PrunerConfig, int], optuna.pruners.BasePruner]
_SAMPLERS: Registry[SamplerBuilder] = Registry("sampler")
_PRUNERS: Registry[PrunerBuilder] = Registry("pruner")


def register_sampler(name: str) -> Callable[[SamplerBuilder], SamplerBuilder]:
    """Register a sampler builder ``(seed) -> sampler`` under ``name`` (a new name)."""
    return _SAMPLERS.register(name)


def register_pruner(name: str) -> Callable[[PrunerBuilder], PrunerBuilder]:
    """Register a pruner builder ``(config, epochs) -> pruner`` under ``name`` (a new name)."""
    return _PRUNERS.register(name)


def list_samplers() -> list[str]:
    """The registered sampler names, sorted."""
    return _SAMPLERS.names()


def list_pruners() -> list[str]:
    """The registered pruner names, sorted."""
    return _PRUNERS.names()


@register_sampler("tpe")
def _tpe(seed: int | None) -> optuna.samplers.BaseSampler:
    """TPE with Optuna 5's defaults: multivariate and constant liar are on already."""
    return optuna.samplers.TPESampler(seed=seed)


@register_sampler("gp")
def _gp(seed: int | None) -> optuna.samplers.BaseSampler:
    """Gaussian-process BO (stable in Optuna 5, pending-aware for parallel workers)."""
    return optuna.samplers.GPSampler(seed=seed)


@register_sampler("cmaes")
def _cmaes(seed: int | None) -> optuna.samplers.BaseSampler:
    """CMA-ES. It ignores categorical parameters (``norm`` of ``pgm`` is sampled at random).

    Needs the ``cmaes`` package, which Optuna imports only at the first sample; checked here so
    that a missing package is a bad-input error before any trial runs.
    """
    if importlib.util.find_spec("cmaes") is None:
        raise ConfigError(
            "sampler.name 'cmaes' needs the cmaes package: pip install 'tether[cmaes]'"
        )
    return optuna.samplers.CmaEsSampler(seed=seed)


@register_sampler("random")
def _random(seed: int | None) -> optuna.samplers.BaseSampler:
    """Uniform (log-uniform) random search."""
    return optuna.samplers.RandomSampler(seed=seed)


@register_pruner("median")
def _median(cfg: PrunerConfig, epochs: int) -> optuna.pruners.BasePruner:
    """Stop a trial whose epoch value is below the median of earlier trials at that epoch."""
    return optuna.pruners.MedianPruner(
        n_startup_trials=cfg.n_startup_trials, n_warmup_steps=cfg.n_warmup_steps
    )


@register_pruner("hyperband")
def _hyperband(cfg: PrunerConfig, epochs: int) -> optuna.pruners.BasePruner:
    """Hyperband over epochs (Li et al., JMLR 2018), from 1 epoch to the recipe's all."""
    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)


@register_pruner("none")
def _none(cfg: PrunerConfig, epochs: int) -> optuna.pruners.BasePruner:
    """Never prune."""
    return optuna.pruners.NopPruner()


def offset_seed(seed: int | None, offset: int) -> int | None:
    """The sampler seed of a process with seed offset ``offset``: ``None`` stays ``None``,
    else ``seed + offset``.

    Example:
        >>> offset_seed(10, 0), offset_seed(10, 3), offset_seed(None, 3)
        (10, 13, None)
    """
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset!r}")
    return None if seed is None else (seed + offset) % SEED_MODULUS


def repeat_seed(seed: int | None, repeat: int) -> int | None:
    """The base sampler seed of repeat ``repeat`` of a search whose spec has ``seed``:
    ``seed + repeat * SEED_OFFSETS`` (repeat 0 keeps ``seed``; ``None`` stays ``None``).

    Repeats are independent searches, so they must not share a seed; and a process joining
    repeat ``r`` adds its offset (< :data:`SEED_OFFSETS`), which keeps it inside repeat
    ``r``'s own range of seeds.

    Example:
        >>> repeat_seed(7, 0), repeat_seed(7, 2), repeat_seed(None, 2)
        (7, 200007, None)
    """
    if repeat < 0:
        raise ValueError(f"repeat must be >= 0, got {repeat!r}")
    return offset_seed(seed, repeat * SEED_OFFSETS)


def make_sampler(cfg: SamplerConfig, *, offset: int) -> optuna.samplers.BaseSampler:
    """The sampler ``cfg`` names, seeded for this process (see :func:`offset_seed`).

    Args:
        cfg: the spec's ``sampler:`` section.
        offset: a number the caller derives from host and process, distinct per process.
    """
    return _SAMPLERS.get(cfg.name)(offset_seed(cfg.seed, offset))


def make_pruner(cfg: PrunerConfig, *, epochs: int) -> optuna.pruners.BasePruner:
    """The pruner ``cfg`` names; ``epochs`` (the recipe's) is Hyperband's largest resource."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs!r}")
    return _PRUNERS.get(cfg.name)(cfg, epochs)
