"""A spec's studies in a storage: created once, checked, found, loaded, deleted.

A spec's method ``m`` is the Optuna study ``<spec name>/m``. Creating it stores the spec, its
fingerprint (search space and base recipe), the code's versions and the metric's name
(:data:`METRIC_NAMES`) on the study, and enqueues the budget once
(:mod:`~tether.search.execution.tickets`), under a lock so that creators started at once do
it once (:func:`~tether.search.storage.creation_lock`). A warm-started
method's budget waits for its source's trials (:func:`enqueue_warm_start`), since its first
ticket holds the radii they learn. Every process that later works on the study checks it was
made from the same search space and by the same Optuna major.

A method's ``start_from`` studies (:mod:`tether.search.start_from`) are read once, when its study
is created: their points are stored on it (:data:`~tether.search.start_from.START_ATTR`) and
enqueued first in its budget (after a warm start's point), then the spec's ``enqueue``.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any
import warnings

import optuna
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from tether.errors import ConfigError
from tether.progress import progress
from tether.search.execution.tickets import TICKETS_ATTR
from tether.search.execution.tickets import enqueue_tickets
from tether.search.methods import get_method
from tether.search.start_from import START_ATTR
from tether.search.start_from import SourceStorages
from tether.search.start_from import StartPoint
from tether.search.start_from import point_params
from tether.search.start_from import start_points
from tether.search.storage import creation_lock
from tether.search.storage import storage_url
from tether.search.storage import study_names
from tether.search.warm_start import Learned
from tether.search.warm_start import warm_start_params
from tether.version import __version__


if TYPE_CHECKING:
    from tether.search.spec import StudySpec


METRIC_NAMES = ("val accuracy",)
"""What a trial's value is, as optuna-dashboard and Optuna's plots label it."""

SPEC_ATTR = "tether:spec"
FINGERPRINT_ATTR = "tether:fingerprint"
VERSION_ATTR = "tether:version"


def model_groups(spec: StudySpec) -> list[str]:
    """The pretrained layer groups of the spec's model (for per-group radii), no weights loaded."""
    from tether.finetune.models.build import build_skeleton
    from tether.finetune.recipe import recipe_from_dict

    _, groups = build_skeleton(recipe_from_dict(spec.base_recipe()))
    return list(groups.extractor)


def create_studies(
    spec: StudySpec,
    storage: optuna.storages.BaseStorage,
    *,
    methods: Sequence[str] | None = None,
    groups: Sequence[str] | None = None,
) -> list[optuna.Study]:
    """Create (or check) one study per method and enqueue its budget once.

    Check, create and enqueue run under the storage's creation lock for this spec: of several
    processes creating the same studies at once, one enqueues the budget and the others find
    it there. A method with ``warm_start`` gets its budget later, from
    :func:`enqueue_warm_start`. ``groups`` are the model's layer groups (:func:`model_groups`
    builds the model if absent). The ``start_from`` studies of a method whose study has no
    starting points yet are read before anything is written; one line each is printed
    (:func:`~tether.progress.progress`) once the studies are created.

    Raises:
        ConfigError: an existing study was made from a different search space; a
            ``start_from`` study cannot be read (missing, unreachable, no complete trial).
    """
    groups = model_groups(spec) if groups is None else groups
    chosen = list(methods or spec.methods)
    with creation_lock(storage, spec.name):
        existing = study_names(storage)
        unstarted = []
        for method in chosen:  # every check before anything is written
            if spec.study_name(method) in existing:
                study = optuna.load_study(study_name=spec.study_name(method), storage=storage)
                check_compatible(study, spec, method)
                if START_ATTR in study.user_attrs or TICKETS_ATTR in study.user_attrs:
                    continue
            unstarted.append(method)
        starts, lines = _read_start_points(spec, storage, unstarted, groups=groups)
        studies = []
        for method in chosen:
            study = optuna.create_study(
                study_name=spec.study_name(method),
                storage=storage,
                direction="maximize",
                load_if_exists=True,
            )
            name_metric(study)
            if FINGERPRINT_ATTR not in study.user_attrs:
                study.set_user_attr(SPEC_ATTR, spec.to_dict())
                study.set_user_attr(FINGERPRINT_ATTR, spec.fingerprint(method))
                study.set_user_attr(
                    VERSION_ATTR, {"tether": __version__, "optuna": optuna.__version__}
                )
            if method in starts:
                study.set_user_attr(START_ATTR, [point.to_data() for point in starts[method]])
            space = spec.methods[method]
            if space.warm_start is None:
                points = [space.enqueue_params(point, groups=groups) for point in space.enqueue]
                known = [*point_params(study), *points]
                enqueue_tickets(study, n_trials=spec.n_trials(method), known=known)
            studies.append(study)
    for line in lines:
        progress(line)
    return studies


def _read_start_points(
    spec: StudySpec,
    storage: optuna.storages.BaseStorage,
    methods: Sequence[str],
    *,
    groups: Sequence[str],
) -> tuple[dict[str, list[StartPoint]], list[str]]:
    """The points of each of ``methods`` that has ``start_from``, and the lines telling them."""
    starts: dict[str, list[StartPoint]] = {}
    lines: list[str] = []
    with SourceStorages(storage) as storages:
        for method in methods:
            if method not in spec.start_from:
                continue
            starts[method], told = start_points(
                spec.start_from[method],
                target=spec.study_name(method),
                space=spec.methods[method],
                groups=groups,
                storages=storages,
                relative=_relative(spec, method) if get_method(method).constrained else None,
            )
            lines += told
    return starts, lines


def _relative(spec: StudySpec, method: str) -> bool:
    """Whether ``method``'s radii are relative: its space's option, else the recipe's."""
    relative = spec.methods[method].relative
    return bool(spec.base_recipe()["constraint"]["relative"]) if relative is None else relative


def name_metric(study: optuna.Study) -> None:
    """Label the study's value :data:`METRIC_NAMES` (optuna-dashboard then says "val accuracy",
    not "Objective 0"); written only where it differs, so calling it again costs a read."""
    if study.metric_names != list(METRIC_NAMES):
        with warnings.catch_warnings():  # experimental since Optuna 3.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(METRIC_NAMES))


def enqueue_warm_start(
    spec: StudySpec,
    storage: optuna.storages.BaseStorage,
    method: str,
    *,
    groups: Sequence[str],
    source_ran_here: bool,
) -> str | None:
    """Enqueue the budget of the warm-started ``method`` once its source's trials are done.

    The first ticket holds the radii the source's best trial learned
    (:func:`~tether.search.warm_start.warm_start_params`), the points read from ``start_from``
    studies when the study was created and the spec's enqueued points follow.
    Without a source study, or with no learned radii in it, the budget is enqueued without
    that point. Under the creation lock, so that of the processes that finish the source at
    once, one enqueues.

    Args:
        spec: the spec; ``spec.methods[method].warm_start`` names the source method.
        storage: the storage holding both studies.
        method: the warm-started method.
        groups: the model's pretrained layer groups.
        source_ran_here: this process has just run the source's tickets, so a WAITING one it
            left is past ``budget.timeout``, not still to run.

    Returns:
        A line for the log (what the first trial is, or why the budget waits), or None when
        the budget was already enqueued.
    """
    source = spec.study_name(str(spec.methods[method].warm_start))
    with creation_lock(storage, spec.name):
        study = optuna.load_study(study_name=spec.study_name(method), storage=storage)
        if TICKETS_ATTR in study.user_attrs:
            return None
        found = source in study_names(storage)
        source_study = optuna.load_study(study_name=source, storage=storage) if found else None
        if source_study is not None:
            pending = (TrialState.RUNNING,) if source_ran_here else _UNFINISHED
            if source_study.get_trials(deepcopy=False, states=pending):
                return (
                    f"[{study.study_name}] waits for {source}, whose trials are not all done; "
                    "the process that finishes them enqueues this study's trials"
                )
        best = None if source_study is None else best_trial(source_study)
        first, line = _warm_start_point(spec, method, best, groups=groups)
        space = spec.methods[method]
        points = [space.enqueue_params(point, groups=groups) for point in space.enqueue]
        known = [*first, *point_params(study), *points]
        enqueue_tickets(study, n_trials=spec.n_trials(method), known=known)
    return line


_UNFINISHED = (TrialState.WAITING, TrialState.RUNNING)


def _warm_start_point(
    spec: StudySpec, method: str, best: FrozenTrial | None, *, groups: Sequence[str]
) -> tuple[list[dict[str, Any]], str]:
    """The first ticket of ``method`` from the source's ``best`` trial (none if it learned
    nothing), and a line for the log."""
    space = spec.methods[method]
    name, source = spec.study_name(method), spec.study_name(str(space.warm_start))
    learned = None if best is None else Learned.of_trial(best)
    if best is None or learned is None:
        return [], f"[{name}] no radii learned in {source} to start from; the sampler starts"
    start = warm_start_params(space, learned, groups=groups, relative=_relative(spec, method))
    clipping = start.clipping()
    line = f"[{name}] first trial: the radii {source} trial {best.number} learned"
    return [start.params], f"{line}; {clipping}" if clipping else line


def _major(version: str) -> str:
    return version.split(".", 1)[0]


def _first_difference(old: Any, new: Any, path: str = "") -> str | None:
    """The dotted key of the first difference between two JSON-like values, with both values."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            found = _first_difference(
                old.get(key), new.get(key), f"{path}.{key}" if path else str(key)
            )
            if found:
                return found
        return None
    if old != new:
        return f"{path or 'the value'}: {old!r} -> {new!r}"
    return None


def check_compatible(study: optuna.Study, spec: StudySpec, method: str) -> None:
    """Refuse to work on a study made by another Optuna major or from another search space.

    Raises:
        ConfigError: naming what differs and how to start afresh.
    """
    written = study.user_attrs.get(VERSION_ATTR, {}).get("optuna")
    if written and _major(written) != _major(optuna.__version__):
        raise ConfigError(
            f"study {study.study_name} was written with optuna {written}, this process has "
            f"optuna {optuna.__version__}; every worker of a study needs the same major version"
        )
    known = study.user_attrs.get(FINGERPRINT_ATTR)
    if known is None or known == spec.fingerprint(method):
        return
    stored = study.user_attrs.get(SPEC_ATTR, {})
    old_space = dict(stored.get("methods", {}).get(method) or {})
    new_space = spec.methods[method].to_data(enqueue=False)
    for start in ("enqueue", "warm_start", "start_from"):  # starting points: not the space
        old_space.pop(start, None)
    change = _first_difference(
        {"space": old_space, "recipe": stored.get("base_recipe")},
        {"space": new_space, "recipe": spec.base_recipe()},
    )
    condition = "" if spec.condition is None else f" --conditions {spec.condition}"
    raise ConfigError(
        f"study {study.study_name} was created from another search space or recipe "
        f"({change or 'the stored spec differs'}); give the spec a new name, or delete the "
        f"study (tether delete SPEC --methods {method}{condition}), to start afresh"
    )


def find_studies(
    specs: Iterable[StudySpec],
    storage: optuna.storages.BaseStorage,
    methods: Sequence[str] | None = None,
) -> list[tuple[StudySpec, str, optuna.Study | None]]:
    """Every condition's and (selected) method's study, ``None`` where it was not created."""
    names = study_names(storage)
    found = []
    for spec in specs:
        for method in methods or spec.methods:
            name = spec.study_name(method)
            study = optuna.load_study(study_name=name, storage=storage) if name in names else None
            found.append((spec, method, study))
    return found


def require_studies(
    specs: Iterable[StudySpec],
    storage: optuna.storages.BaseStorage,
    methods: Sequence[str] | None = None,
    *,
    every: bool = True,
) -> None:
    """Refuse specs whose studies are not in the storage: ``every`` one of them must be there
    (to search or evaluate them), or at least one (to read them).

    Raises:
        ConfigError: naming the first missing study, the storage (password masked) and how
            to create it.
    """
    names = study_names(storage)
    wanted = [s.study_name(m) for s in specs for m in methods or s.methods]
    missing = [n for n in wanted if n not in names]
    if missing and (every or len(missing) == len(wanted)):
        others = "" if len(missing) == 1 else f" (nor {len(missing) - 1} more of the spec's)"
        raise ConfigError(
            f"study {missing[0]} does not exist in {storage_url(storage)}{others}; "
            "create it with tether run"
        )


def load_studies(
    spec: StudySpec,
    storage: optuna.storages.BaseStorage,
    methods: Sequence[str] | None = None,
    *,
    sampler: Callable[[], optuna.samplers.BaseSampler] | None = None,
    pruner: Callable[[], optuna.pruners.BasePruner] | None = None,
) -> dict[str, optuna.Study]:
    """Each (selected) method's study, with a sampler and a pruner of its own if given (the
    factories are called once per study).

    Raises:
        ConfigError: a study does not exist (see :func:`require_studies`).
    """
    chosen = list(methods or spec.methods)
    require_studies([spec], storage, chosen)
    return {
        m: optuna.load_study(
            study_name=spec.study_name(m),
            storage=storage,
            sampler=None if sampler is None else sampler(),
            pruner=None if pruner is None else pruner(),
        )
        for m in chosen
    }


def delete_studies(
    specs: Iterable[StudySpec],
    storage: optuna.storages.BaseStorage,
    methods: Sequence[str] | None = None,
) -> list[str]:
    """Delete the (selected) studies of ``specs`` that exist; their names."""
    deleted = []
    for _, _, study in find_studies(specs, storage, methods):
        if study is not None:
            optuna.delete_study(study_name=study.study_name, storage=storage)
            deleted.append(study.study_name)
    return deleted


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The complete trial with the highest value; of equal values, the first (lowest number).

    What ``tether compare`` reports, ``tether evaluate`` re-runs and the report plots. None
    when no trial has completed with a value.
    """
    complete = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None
    ]
    return max(complete, key=lambda t: (t.value, -t.number), default=None)
