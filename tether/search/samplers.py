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

Defaults, chosen by ``benchmarks/search_cost.py`` (MARS-PGM's two radii on the digits task, 20
trials of 80 epochs, 5 sampler seeds; figures in ``benchmarks/search_cost.md``):

- ``sampler.n_startup_trials``: a quarter of the budget, at most 10 (:func:`default_startup`).
  Optuna's 10 leaves a 20-trial search half random and an 8-trial one all random.
- ``pruner.n_warmup_steps``: a quarter of the epochs (:func:`default_warmup`). With no warm-up
  the median pruner judged trials on their first epoch or two, and 8 of 20 searches never came
  within a point of the reference's best; with the warm-up, none missed.

Example:
    >>> type(make_sampler(SamplerConfig(name="tpe", seed=7), offset=1, n_trials=20)).__name__
    'TPESampler'
    >>> type(make_pruner(PrunerConfig(name="hyperband"), epochs=30)).__name__
    'HyperbandPruner'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import replace
import importlib.util

import optuna

from tether.errors import ConfigError
from tether.registry import Registry


SEED_MODULUS = 2**32
SEED_OFFSETS = 100_000
"""A process's seed offset is below this; the repeats of a search are this far apart."""


STARTUP_SHARE = 0.25
"""The default random start-up of a sampler, as a share of the budget (at most
:data:`MAX_STARTUP` trials). Measured: ``benchmarks/search_cost.md``."""
MAX_STARTUP = 10
"""The default start-up never exceeds Optuna's own default (10 trials)."""
WARMUP_SHARE = 0.25
"""The median pruner's default warm-up, as a share of a trial's epochs."""


def default_startup(n_trials: int) -> int:
    """The random start-up trials of a search of ``n_trials`` when the spec names none: a
    quarter of the budget, between 1 and Optuna's default of 10.

    With Optuna's 10, a 20-trial search spends half its budget at random and an 8-trial one
    all of it; ``benchmarks/search_cost.md`` measures the quarter.

    Example:
        >>> default_startup(8), default_startup(20), default_startup(200)
        (2, 5, 10)
    """
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials!r}")
    return max(1, min(MAX_STARTUP, int(n_trials * STARTUP_SHARE)))


def default_warmup(epochs: int) -> int:
    """The median pruner's warm-up when the spec names none: a quarter of the epochs.

    With none, a trial's first epoch or two decide, and they rank the radii by how fast a
    trial starts, not where it ends (``benchmarks/search_cost.md``).

    Example:
        >>> default_warmup(80), default_warmup(30), default_warmup(1)
        (20, 8, 0)
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs!r}")
    return round(epochs * WARMUP_SHARE)


@dataclass(frozen=True)
class SamplerConfig:
    """``sampler:`` of a study spec: the algorithm, the base seed (``None``: random), the
    random start-up trials of ``tpe``, ``gp`` and ``cmaes`` (``None``: :func:`default_startup`
    of the budget) and whether ``tpe`` models the parameters jointly (Optuna 5's default).
    """

    name: str = "tpe"
    seed: int | None = None
    n_startup_trials: int | None = None
    multivariate: bool = True

    def __post_init__(self) -> None:
        _SAMPLERS.get(self.name, key="sampler.name")
        if self.seed is not None and self.seed < 0:
            raise ConfigError(f"sampler.seed must be >= 0 or null, got {self.seed!r}")
        if self.n_startup_trials is not None:
            if self.n_startup_trials < 0:
                raise ConfigError(
                    f"sampler.n_startup_trials must be >= 0 or null, got {self.n_startup_trials!r}"
                )
            if self.name == "random":
                raise ConfigError("sampler.n_startup_trials does not apply to the random sampler")
        if not self.multivariate and self.name != "tpe":
            raise ConfigError(f"sampler.multivariate applies to tpe only, not {self.name!r}")

    def startup(self, n_trials: int) -> int:
        """The start-up trials of a search of ``n_trials`` (the spec's, else the default)."""
        if self.n_startup_trials is None:
            return default_startup(n_trials)
        return self.n_startup_trials


@dataclass(frozen=True)
class PrunerConfig:
    """``pruner:`` of a study spec. Steps are epochs.

    ``n_startup_trials`` and ``n_warmup_steps`` are the median pruner's: no pruning before that
    many trials have finished, nor before that epoch of a trial (``None``: :func:`default_warmup`
    of the recipe's epochs).
    """

    name: str = "median"
    n_startup_trials: int = 5
    n_warmup_steps: int | None = None

    def __post_init__(self) -> None:
        _PRUNERS.get(self.name, key="pruner.name")
        for key in ("n_startup_trials", "n_warmup_steps"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise ConfigError(f"pruner.{key} must be >= 0, got {value!r}")

    def warmup(self, epochs: int) -> int:
        """The warm-up epochs of a trial of ``epochs`` (the spec's, else the default)."""
        return default_warmup(epochs) if self.n_warmup_steps is None else self.n_warmup_steps


SamplerBuilder = Callable[[SamplerConfig, int], optuna.samplers.BaseSampler]
PrunerBuilder = Callable[[PrunerConfig, int], optuna.pruners.BasePruner]
_SAMPLERS: Registry[SamplerBuilder] = Registry("sampler")
_PRUNERS: Registry[PrunerBuilder] = Registry("pruner")


def register_sampler(name: str) -> Callable[[SamplerBuilder], SamplerBuilder]:
    """Register a sampler builder ``(config, n_trials) -> sampler`` under ``name`` (a new
    name). ``config`` is the spec's ``sampler:`` with the seed of one process
    (:func:`offset_seed`); ``n_trials`` is the budget (see :meth:`SamplerConfig.startup`).
    """
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
def _tpe(cfg: SamplerConfig, n_trials: int) -> optuna.samplers.BaseSampler:
    """TPE with Optuna 5's defaults (multivariate for one objective, constant liar) but the
    start-up; ``multivariate: false`` models each parameter on its own (Optuna 4, hyperopt)."""
    return optuna.samplers.TPESampler(
        seed=cfg.seed,
        n_startup_trials=cfg.startup(n_trials),
        multivariate=None if cfg.multivariate else False,  # None: Optuna 5's own choice
    )


@register_sampler("gp")
def _gp(cfg: SamplerConfig, n_trials: int) -> optuna.samplers.BaseSampler:
    """Gaussian-process BO (stable in Optuna 5, pending-aware for parallel workers)."""
    return optuna.samplers.GPSampler(seed=cfg.seed, n_startup_trials=cfg.startup(n_trials))


@register_sampler("cmaes")
def _cmaes(cfg: SamplerConfig, n_trials: int) -> optuna.samplers.BaseSampler:
    """CMA-ES. It ignores categorical parameters (``norm`` of ``pgm`` is sampled at random).

    Needs the ``cmaes`` package, which Optuna imports only at the first sample; checked here so
    that a missing package is a bad-input error before any trial runs.
    """
    if importlib.util.find_spec("cmaes") is None:
        raise ConfigError(
            "sampler.name 'cmaes' needs the cmaes package: pip install 'tether[cmaes]'"
        )
    return optuna.samplers.CmaEsSampler(seed=cfg.seed, n_startup_trials=cfg.startup(n_trials))


@register_sampler("random")
def _random(cfg: SamplerConfig, n_trials: int) -> optuna.samplers.BaseSampler:
    """Uniform (log-uniform) random search."""
    return optuna.samplers.RandomSampler(seed=cfg.seed)


@register_pruner("median")
def _median(cfg: PrunerConfig, epochs: int) -> optuna.pruners.BasePruner:
    """Stop a trial whose epoch value is below the median of earlier trials at that epoch."""
    return optuna.pruners.MedianPruner(
        n_startup_trials=cfg.n_startup_trials, n_warmup_steps=cfg.warmup(epochs)
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


def make_sampler(cfg: SamplerConfig, *, offset: int, n_trials: int) -> optuna.samplers.BaseSampler:
    """The sampler ``cfg`` names, seeded for this process (see :func:`offset_seed`).

    Args:
        cfg: the spec's ``sampler:`` section.
        offset: a number the caller derives from host and process, distinct per process.
        n_trials: the search's budget, which sizes the default start-up.
    """
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials!r}")
    seeded = replace(cfg, seed=offset_seed(cfg.seed, offset))
    return _SAMPLERS.get(cfg.name)(seeded, n_trials)


def make_pruner(cfg: PrunerConfig, *, epochs: int) -> optuna.pruners.BasePruner:
    """The pruner ``cfg`` names; ``epochs`` (the recipe's) is Hyperband's largest resource."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs!r}")
    return _PRUNERS.get(cfg.name)(cfg, epochs)
