"""Study specs (``studies/*.yaml``): what a search compares, over which space, on what budget.

A spec names a base recipe (a path relative to the spec file) and ``set`` overrides for it, the
methods to compare (:mod:`tether.search.methods`) with each one's search space and known-good
points to try first, the budget per method, the sampler and pruner, and the final evaluation::

    name: digits                        # studies are named "<name>/<method>"
    conditions:                         # optional: variants of the whole search, each
      noise20: {set: {data.noise_rate: 0.2}}   # its own spec "digits.noise20"
    recipe: ../configs/digits.yaml
    set: {train.epochs: 60}             # dotted or nested keys, merged into the recipe
    budget: {n_trials: 12, timeout: null, trial_timeout: 600, repeats: 1}
    sampler: {name: tpe, seed: null}    # n_startup_trials, multivariate: see below
    pruner: {name: median, n_startup_trials: 4, n_warmup_steps: 10}
    methods:
      standard: {}
      mars-pgm:
        groups: shared                  # shared | independent | geometric
        relative: true                  # fixed options, straight into the recipe
        radius: {low: 0.01, high: 2.0, log: true}
        head_radius: {low: 0.5, high: 30.0}
        enqueue: [{radius: 0.1, head_radius: 3.0}]
        warm_start: ftp                 # before those: the radii ftp's best trial learned
        start_from: [{study: flowers/mars-pgm, top: 3}]   # then: an earlier search's best
      ftp: {k: {low: 0.1, high: 1.0, log: false}}
      wise-ft: {}                       # or any method with wise: true
    evaluation: {n_seeds: 5, refit: false}
    callbacks:                          # optional: Optuna callbacks, after each trial
      - factory: optuna_integration.mlflow:MLflowCallback
        kwargs: {tracking_uri: "sqlite:///mlflow.db", metric_name: val accuracy}
    artifacts: true                     # each trial's log and curve as Optuna artifacts:
                                        # true (beside the storage), a folder, or false

``budget.repeats: R`` runs every search (every method of every condition) R times, each
repeat with its own studies and sampler seed: which configuration wins a few trials is itself
random, and only independent searches measure that part of the variance, which the evaluation
seeds do not (:func:`repeats_of`; ``tether compare`` reports across them).

A spec that names no sampler or pruner searches with TPE (multivariate, Optuna 5) whose random
start-up is a quarter of ``budget.n_trials`` (at most 10), and the median pruner, which stops
no trial before 5 have finished nor before a quarter of the epochs
(:mod:`tether.search.samplers`; why: ``benchmarks/search_cost.md``).

A parameter is a range ``{low, high, log}`` (``log`` defaults to true; the integer parameters,
epochs, default to false) or a list of choices.
With ``groups: independent`` the ``radius`` range applies to every layer group and
``radius.<group>`` may override it for one group; an enqueued point may give ``radius`` for
every group at once. Everything is checked when the spec loads, and every error names the
dotted key, the value and what is allowed. The base recipe is validated with every method's
patch at the ends of its ranges and at each enqueued point. A ``warm_start`` must name a method
of the same spec that learns radii; :class:`~tether.search.execution.runner.Search` runs that
method's trials first.

``start_from`` (:mod:`tether.search.start_from`) names earlier studies, in this storage or
another (``storage: URL``), whose best ``top`` trials start a method's search, mapped onto its
space by parameter name and clipped into it. A method takes a list of ``{study, top, storage}``
(or ``{spec, ...}``: the study ``<spec>/<method>``); the spec's own ``start_from: {spec: NAME}``
is the default of every method that searches something and names none (``start_from: []``
turns it off). They are read when the studies are created and are not part of the space.

``callbacks`` (:mod:`tether.search.callbacks`) and ``artifacts`` (:mod:`tether.search.artifacts`)
say where a process sends its trials' results besides the storage, not what the studies are:
they are not stored with the studies, and a worker may set its own (``--set artifacts=PATH``).
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
import dataclasses
from dataclasses import dataclass
from dataclasses import field
import os
import re
from typing import Any

import optuna

from tether.errors import ConfigError
from tether.finetune.config import apply_overrides
from tether.finetune.config import from_dict
from tether.finetune.config import read_yaml
from tether.finetune.config import to_dict
from tether.finetune.recipe import recipe_from_dict
from tether.jsondata import deep_merge
from tether.jsondata import json_digest
from tether.jsondata import json_safe
from tether.search.callbacks import CallbackSpec
from tether.search.callbacks import callbacks_from_data
from tether.search.methods import GROUP_PREFIX
from tether.search.methods import get_method
from tether.search.samplers import PrunerConfig
from tether.search.samplers import SamplerConfig
from tether.search.samplers import repeat_seed
from tether.search.space import Choice
from tether.search.space import FloatRange
from tether.search.space import IntRange
from tether.search.space import MethodSpace
from tether.search.space import Param
from tether.search.space import method_spaces
from tether.search.start_from import StartSource
from tether.search.start_from import split_start_from
from tether.search.start_from import start_sources


__all__ = [
    "Budget",
    "Choice",
    "EvaluationConfig",
    "FloatRange",
    "IntRange",
    "MethodSpace",
    "Param",
    "StudySpec",
    "load_spec",
    "load_specs",
    "repeats_of",
    "spec_from_dict",
]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class Budget:
    """``budget:``, per method: trials, seconds for the whole search, seconds per trial, and
    how many independent searches (``repeats``) of that size to run (see :func:`repeats_of`).
    """

    n_trials: int = 20
    timeout: float | None = None
    trial_timeout: float | None = None
    repeats: int = 1

    def __post_init__(self) -> None:
        for key in ("n_trials", "repeats"):
            value = getattr(self, key)
            if value < 1:
                raise ConfigError(f"budget.{key} must be >= 1, got {value!r}")
        for key in ("timeout", "trial_timeout"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise ConfigError(f"budget.{key} must be > 0 seconds or null, got {value!r}")


@dataclass(frozen=True)
class EvaluationConfig:
    """``evaluation:``: the best configuration of each method re-run over ``n_seeds`` seeds.

    ``refit``: train on train+val and report the test accuracy (the MARS paper's protocol).
    """

    n_seeds: int = 5
    refit: bool = False

    def __post_init__(self) -> None:
        if self.n_seeds < 1:
            raise ConfigError(f"evaluation.n_seeds must be >= 1, got {self.n_seeds!r}")


@dataclass(frozen=True)
class StudySpec:
    """A validated study spec; build it with :func:`load_specs` or :func:`spec_from_dict`.

    ``condition`` names the variant of a spec with ``conditions:`` (``name`` is then
    ``<spec>.<condition>``); ``repeat`` numbers the independent searches of a spec with
    ``budget.repeats`` > 1 (``name`` then ends in ``~r<repeat>`` from repeat 1 on; repeat 0
    keeps the name, see :func:`repeats_of`). ``start_from`` holds each method's earlier
    studies to start from (the spec's default applied; methods without any are absent).
    """

    name: str
    recipe: str
    methods: dict[str, MethodSpace]
    condition: str | None = None
    repeat: int = 0
    set: dict[str, Any] = field(default_factory=dict)
    budget: Budget = field(default_factory=Budget)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    callbacks: tuple[CallbackSpec, ...] = ()
    artifacts: str | bool = True
    start_from: dict[str, tuple[StartSource, ...]] = field(default_factory=dict)
    resolved_recipe: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def family(self) -> str:
        """The spec file's name: ``name`` without the condition and the repeat."""
        name = self.name.removesuffix(repeat_suffix(self.repeat))
        return name.removesuffix(f".{self.condition}") if self.condition else name

    def study_name(self, method: str) -> str:
        """The Optuna study of ``method``: ``"<name>/<method>"``."""
        self._space(method)
        return f"{self.name}/{method}"

    def n_trials(self, method: str) -> int:
        """The trials to run for ``method``: the budget, or 1 when nothing is searched."""
        return self.budget.n_trials if self._space(method).params else 1

    def base_recipe(self) -> dict[str, Any]:
        """A copy of the resolved base recipe (``set`` applied), as plain data."""
        return deep_merge({}, self.resolved_recipe)

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-safe data, with the resolved base recipe (stored on each study).

        A condition's spec adds ``condition``: its name; a repeat after the first adds
        ``repeat``: its number (its ``sampler.seed`` is the one it searched with).
        """
        condition = {} if self.condition is None else {"condition": self.condition}
        repeat = {"repeat": self.repeat} if self.repeat else {}
        return {
            "name": self.name,
            **condition,
            **repeat,
            "recipe": self.recipe,
            "set": json_safe(self.set),
            "budget": to_dict(self.budget),
            "sampler": to_dict(self.sampler),
            "pruner": to_dict(self.pruner),
            "methods": {m: self._method_data(m) for m in self.methods},
            "evaluation": to_dict(self.evaluation),
            "base_recipe": self.base_recipe(),
        }

    def _method_data(self, method: str) -> dict[str, Any]:
        """A method's entry, with its ``start_from`` (storage passwords masked)."""
        data = self.methods[method].to_data()
        if method in self.start_from:
            data["start_from"] = [source.to_data() for source in self.start_from[method]]
        return data

    def fingerprint(self, method: str) -> str:
        """sha256 of ``method``'s search space and the base recipe (not budget, not enqueue,
        not start_from).

        Two specs with one fingerprint give the same trials the same meaning, so a search may
        go on in an existing study; any other change needs a new study.
        """
        payload = {
            "method": method,
            "space": self._space(method).to_data(enqueue=False),
            "recipe": self.resolved_recipe,
        }
        return json_digest(json_safe(payload), compact=True)

    def _space(self, method: str) -> MethodSpace:
        try:
            return self.methods[method]
        except KeyError:
            raise ConfigError(
                f"spec {self.name!r} has no method {method!r}; it has {', '.join(self.methods)}"
            ) from None


SPEC_KEYS = (
    "name",
    "recipe",
    "set",
    "budget",
    "sampler",
    "pruner",
    "methods",
    "evaluation",
    "callbacks",
    "artifacts",
    "start_from",
)
CONDITION_KEYS = ("set", "methods")


def load_specs(path: str, overrides: Sequence[str] = ()) -> list[StudySpec]:
    """Read and validate a study spec file: one spec, or one per entry of ``conditions:``.

    Args:
        path: ``studies/x.yaml``; its ``recipe`` is relative to the folder it is in.
        overrides: ``dotted.key=value`` into the spec, e.g. ``budget.n_trials=3`` or
            ``set.train.epochs=2`` (the latter reaches the recipe).

    Raises:
        ConfigError: the file, a key or a value is unusable; the message names it.
    """
    if not os.path.isfile(path):
        raise ConfigError(f"study spec {path} does not exist")
    try:
        data = read_yaml(path)
    except ConfigError as error:
        raise ConfigError(str(error).replace("recipe", "study spec", 1)) from None
    if isinstance(data.get("set"), Mapping):
        data["set"] = _expand(data["set"], "set")
    data = apply_overrides(data, overrides)
    stem = os.path.basename(path).rsplit(".", 1)[0]
    root = os.path.dirname(os.path.abspath(path))
    return specs_from_dict(data, root=root, default_name=stem)


def load_spec(path: str, overrides: Sequence[str] = ()) -> StudySpec:
    """Read and validate a study spec file that has no ``conditions:`` and one repeat (see
    :func:`load_specs`)."""
    specs = load_specs(path, overrides)
    if len(specs) == 1:
        return specs[0]
    if specs[0].condition is not None:
        names = ", ".join(dict.fromkeys(s.condition or "" for s in specs))
        raise ConfigError(f"study spec {path} has several conditions ({names}); load them all")
    raise ConfigError(
        f"study spec {path} has several repeats (budget.repeats: {len(specs)}); load them all"
    )


def specs_from_dict(
    data: Mapping[str, Any], *, root: str = ".", default_name: str = ""
) -> list[StudySpec]:
    """Validate a spec mapping, expanding its ``conditions:`` into one spec each, and each of
    those into its ``budget.repeats`` (:func:`repeats_of`), a condition's repeats together.

    A condition is a variant of the whole search, e.g. a label-noise rate: its ``set`` is
    merged into the spec's ``set`` and its ``methods`` into the spec's ``methods`` (to enqueue
    the points published for that condition, say). Condition ``c`` of spec ``s`` is the spec
    ``s.c``, whose studies are ``s.c/<method>``.
    """
    specs = _condition_specs(data, root, default_name)
    return [repeat for spec in specs for repeat in repeats_of(spec)]


def repeat_suffix(repeat: int) -> str:
    """What repeat ``repeat`` adds to a spec's name: nothing for the first, else ``~r<repeat>``.

    A name a spec or a condition can have holds no ``~``, so no repeat's studies can take
    another spec's names.

    Example:
        >>> repeat_suffix(0), repeat_suffix(2)
        ('', '~r2')
    """
    return f"~r{repeat}" if repeat else ""


def repeats_of(spec: StudySpec) -> list[StudySpec]:
    """The ``budget.repeats`` independent searches of ``spec``: repeat ``r`` is ``spec`` named
    ``<name>~r<r>`` (repeat 0: ``spec`` itself, so one repeat changes nothing), whose sampler
    starts from :func:`~tether.search.samplers.repeat_seed` ``(seed, r)``.

    Why: with a budget of a few trials, which configuration wins depends on the sampler's
    draws, so a method's test accuracy varies from one search to the next as well as from one
    evaluation seed to the next. The seeds' spread is measured by the evaluation; the
    searches' spread only by searching again, with the same budget and another seed. Each
    repeat has its own studies (``<name>~r<r>/<method>``), its own evaluation and its own row
    in ``tether compare``, which also reports across them.
    """
    return [
        dataclasses.replace(
            spec,
            name=f"{spec.name}{repeat_suffix(r)}",
            repeat=r,
            sampler=dataclasses.replace(spec.sampler, seed=repeat_seed(spec.sampler.seed, r)),
        )
        if r
        else spec
        for r in range(spec.budget.repeats)
    ]


def _condition_specs(data: Mapping[str, Any], root: str, default_name: str) -> list[StudySpec]:
    """One spec per condition of ``data`` (one spec without ``conditions:``), unrepeated."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"a study spec must be a mapping of keys, got {data!r}")
    conditions = data.get("conditions")
    base = {k: v for k, v in data.items() if k != "conditions"}
    if "conditions" not in data:
        return [spec_from_dict(base, root=root, default_name=default_name)]
    if not isinstance(conditions, Mapping) or not conditions:
        raise ConfigError(
            f"conditions must map condition names to {{set, methods}}, got {conditions!r}"
        )
    if isinstance(base.get("set"), Mapping):
        base["set"] = _expand(base["set"], "set")
    specs = []
    for name, body in conditions.items():
        where = f"conditions.{name}"
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigError(
                f"{where}: a condition name must be letters, digits, '.', '_' or '-', got {name!r}"
            )
        body = {} if body is None else body
        if not isinstance(body, Mapping):
            raise ConfigError(f"{where} must be a mapping with set and methods, got {body!r}")
        unknown = [k for k in body if k not in CONDITION_KEYS]
        if unknown:
            raise ConfigError(
                f"unknown key {where}.{unknown[0]}; a condition accepts "
                f"{', '.join(CONDITION_KEYS)}"
            )
        methods = body.get("methods") or {}
        if not isinstance(methods, Mapping):
            raise ConfigError(f"{where}.methods must be a mapping, got {methods!r}")
        extra = [m for m in methods if m not in (base.get("methods") or {})]
        if extra:
            raise ConfigError(
                f"{where}.methods.{extra[0]}: the spec's methods have no {extra[0]!r}"
            )
        patch = {"set": _expand(body.get("set") or {}, f"{where}.set"), "methods": methods}
        try:
            spec = spec_from_dict(deep_merge(base, patch), root=root, default_name=default_name)
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None
        specs.append(dataclasses.replace(spec, name=f"{spec.name}.{name}", condition=name))
    return specs


def spec_from_dict(
    data: Mapping[str, Any], *, root: str = ".", default_name: str = ""
) -> StudySpec:
    """Validate a spec mapping; ``recipe`` is read relative to the folder ``root``.

    The spec of its first repeat only; :func:`specs_from_dict` expands conditions and repeats.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"a study spec must be a mapping of keys, got {data!r}")
    unknown = [k for k in data if k not in SPEC_KEYS]
    if unknown:
        accepted = ", ".join((*SPEC_KEYS, "conditions"))
        raise ConfigError(f"unknown key {unknown[0]}; a study spec accepts {accepted}")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            "name must be letters, digits, '.', '_' or '-' (it starts every study name "
            f"'<name>/<method>'), got {name!r}"
        )
    recipe = data.get("recipe")
    if not isinstance(recipe, str) or not recipe:
        raise ConfigError(f"recipe must be the path of a recipe file, got {recipe!r}")
    overrides = data.get("set") or {}
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"set must be a mapping of recipe keys to values, got {overrides!r}")
    overrides = _expand(overrides, "set")
    methods_data, own_starts = split_start_from(data.get("methods"))
    methods = method_spaces(methods_data)
    spec = StudySpec(
        name=name,
        recipe=recipe,
        methods=methods,
        set=overrides,
        budget=from_dict(Budget, data.get("budget"), prefix="budget."),
        sampler=from_dict(SamplerConfig, data.get("sampler"), prefix="sampler."),
        pruner=from_dict(PrunerConfig, data.get("pruner"), prefix="pruner."),
        evaluation=from_dict(EvaluationConfig, data.get("evaluation"), prefix="evaluation."),
        callbacks=callbacks_from_data(data.get("callbacks")),
        artifacts=_artifacts_setting(data.get("artifacts")),
        start_from=start_sources(methods, own_starts, data.get("start_from")),
        resolved_recipe=_base_recipe(recipe, root, overrides),
    )
    _check_warm_starts(spec.methods)
    _check_optimizer(spec)
    _probe(spec)
    return spec


def _artifacts_setting(value: object) -> str | bool:
    """``artifacts:``: true or null (the default folder), false (none), or a folder."""
    if value is None:
        return True
    if isinstance(value, bool) or (isinstance(value, str) and value.strip()):
        return value
    raise ConfigError(
        f"artifacts must be true (a folder beside the storage), false (none) or a folder "
        f"path, got {value!r}"
    )


def _expand(mapping: Mapping[Any, Any], where: str) -> dict[str, Any]:
    """``{"train.epochs": 2}`` -> ``{"train": {"epochs": 2}}``, nested mappings merged."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if not isinstance(key, str) or not all(key.split(".")):
            raise ConfigError(f"{where} has a bad key {key!r}; use dotted recipe keys")
        nested = _expand(value, f"{where}.{key}") if isinstance(value, Mapping) else value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        out = deep_merge(out, nested)
    return out


def _base_recipe(recipe: str, root: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    path = os.path.normpath(os.path.join(root, recipe))
    if not os.path.isfile(path):
        raise ConfigError(f"recipe {recipe!r}: no such file {path}")
    data = read_yaml(path)
    data.setdefault("name", os.path.basename(path).rsplit(".", 1)[0])
    try:
        return recipe_from_dict(deep_merge(data, overrides)).to_dict()
    except ConfigError as error:
        raise ConfigError(f"recipe {recipe} with set: {error}") from None


def _check_warm_starts(methods: Mapping[str, MethodSpace]) -> None:
    """A warm start's source must be searched in the same spec (same data, same condition)."""
    for name, space in methods.items():
        if space.warm_start is not None and space.warm_start not in methods:
            raise ConfigError(
                f"methods.{name}.warm_start: {space.warm_start} is not a method of this spec; "
                f"it has {', '.join(methods)}"
            )


def _check_optimizer(spec: StudySpec) -> None:
    """Refuse a base recipe with SPD's optimiser: every method but ``spd`` keeps the recipe's."""
    if spec.resolved_recipe["train"]["optimizer"] != "spd":
        return
    others = [m for m in spec.methods if "optimizer" not in get_method(m).patch["train"]]
    if others:
        raise ConfigError(
            f"recipe {spec.recipe} with set: train.optimizer is spd, so {others[0]} would run "
            "SPD too; set adam or sgd there and compare the spd method"
        )


def _probe(spec: StudySpec) -> None:
    """Validate the base recipe with each method's patch at its extremes and enqueued points."""
    for name, space in spec.methods.items():
        groups = sorted({k[len(GROUP_PREFIX) :] for k in _named(space)}) or ["group"]
        for point in _probe_points(space, groups):
            patch = space.suggest(optuna.trial.FixedTrial(point), groups=groups)
            try:
                recipe_from_dict(deep_merge(spec.resolved_recipe, patch))
            except ConfigError as error:
                raise ConfigError(f"methods.{name} at {point}: {error}") from None
    if spec.evaluation.refit:
        try:
            recipe_from_dict(deep_merge(spec.resolved_recipe, {"train": {"refit": True}}))
        except ConfigError as error:
            raise ConfigError(f"evaluation.refit: {error}") from None


def _named(space: MethodSpace) -> list[str]:
    """The ``radius.<group>`` keys of an independent space and its enqueued points."""
    keys = [*space.params, *(k for point in space.enqueue for k in point)]
    return [k for k in keys if k.startswith(GROUP_PREFIX)] if space.groups == "independent" else []


def _probe_points(space: MethodSpace, groups: Sequence[str]) -> list[dict[str, Any]]:
    names = space.trial_params(groups)
    low = {n: p.ends()[0] for n, p in names.items()}
    points = [low, {n: p.ends()[1] for n, p in names.items()}]
    for n, p in names.items():
        if isinstance(p, Choice):
            points += [{**low, n: c} for c in p.choices]
    for point in space.enqueue:
        points.append({**low, **space.enqueue_params(point, groups=groups)})
    return points
