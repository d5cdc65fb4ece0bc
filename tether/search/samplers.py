"""Samplers and pruners by name (``sampler:`` and ``pruner:`` in a study spec).

Strings become Optuna objects here and nowhere else. A new sampler or pruner is one
``@register_sampler`` / ``@register_pruner`` function.

Seed policy: with ``seed: null`` every process draws its own random seed; with ``seed: S`` the
worker numbered ``w`` uses ``S + w``, so parallel workers never share a seed and never propose
the same first points (Optuna's samplers page: "use either seed=None or different seed values
among processes"; optuna#4714). Optuna does not store samplers or pruners in its storage, so
every worker rebuilds them from the same spec.

Example:
    >>> type(make_sampler(SamplerConfig(name="tpe", seed=7), worker=1)).__name__
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


SEED_MODULUS = 2**32


@dataclass(frozen=True)
class SamplerConfig:
    """``sampler:`` of a study spec: the algorithm and the base seed (``None``: random)."""

    name: str = "tpe"
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.name not in _SAMPLERS:
            raise ConfigError(
                f"sampler.name {self.name!r} is not a sampler; choose from "
                f"{', '.join(list_samplers())}"
            )
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
        if self.name not in _PRUNERS:
            raise ConfigError(
                f"pruner.name {self.name!r} is not a pruner; choose from "
                f"{', '.join(list_pruners())}"
            )
        for key in ("n_startup_trials", "n_warmup_steps"):
            value = getattr(self, key)
            if value < 0:
                raise ConfigError(f"pruner.{key} must be >= 0, got {value!r}")


SamplerBuilder = Callable[[int | None], optuna.samplers.BaseSampler]
PrunerBuilder = Callable[[PrunerConfig, int], optuna.pruners.BasePruner]
_SAMPLERS: dict[str, SamplerBuilder] = {}
_PRUNERS: dict[str, PrunerBuilder] = {}


def register_sampler(name: str) -> Callable[[SamplerBuilder], SamplerBuilder]:
    """Register a sampler builder ``(seed) -> sampler`` under ``name`` (a new name)."""

    def decorator(build: SamplerBuilder) -> SamplerBuilder:
        if name in _SAMPLERS:
            raise ValueError(f"sampler {name!r} is already registered")
        _SAMPLERS[name] = build
        return build

    return decorator


def register_pruner(name: str) -> Callable[[PrunerBuilder], PrunerBuilder]:
    """Register a pruner builder ``(config, epochs) -> pruner`` under ``name`` (a new name)."""

    def decorator(build: PrunerBuilder) -> PrunerBuilder:
        if name in _PRUNERS:
            raise ValueError(f"pruner {name!r} is already registered")
        _PRUNERS[name] = build
        return build

    return decorator


def list_samplers() -> list[str]:
    """The registered sampler names, sorted."""
    return sorted(_SAMPLERS)


def list_pruners() -> list[str]:
    """The registered pruner names, sorted."""
    return sorted(_PRUNERS)


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
        raise ConfigError("sampler.name 'cmaes' needs the cmaes package: pip install cmaes")
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


def worker_seed(seed: int | None, worker: int) -> int | None:
    """The sampler seed of worker ``worker``: ``None`` stays ``None``, else ``seed + worker``.

    Example:
        >>> worker_seed(10, 0), worker_seed(10, 3), worker_seed(None, 3)
        (10, 13, None)
    """
    if worker < 0:
        raise ValueError(f"worker must be >= 0, got {worker!r}")
    return None if seed is None else (seed + worker) % SEED_MODULUS


def make_sampler(cfg: SamplerConfig, *, worker: int) -> optuna.samplers.BaseSampler:
    """The sampler ``cfg`` names, seeded for this worker (see :func:`worker_seed`).

    Args:
        cfg: the spec's ``sampler:`` section.
        worker: a number the caller derives from host, process and slot, distinct per worker.
    """
    return _SAMPLERS[cfg.name](worker_seed(cfg.seed, worker))


def make_pruner(cfg: PrunerConfig, *, epochs: int) -> optuna.pruners.BasePruner:
    """The pruner ``cfg`` names; ``epochs`` (the recipe's) is Hyperband's largest resource."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs!r}")
    return _PRUNERS[cfg.name](cfg, epochs)
