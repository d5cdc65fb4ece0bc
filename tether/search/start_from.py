"""Start from earlier studies: the best configurations of other searches become the first trials.

A search on a new dataset can start from what worked on the last one. A method's entry (or
the whole spec) names earlier studies, in this storage or another, and the best ``top`` complete
trials of each are enqueued before the spec's own ``enqueue`` points and the sampler::

    start_from: {spec: digits, top: 3}          # every searched method: study digits/<method>
    methods:
      mars-pgm:
        radius: {low: 0.01, high: 1.0}
        head_radius: {low: 0.5, high: 10.0}
        start_from:                              # this method's own list (replaces the above)
          - {study: digits/mars-pgm, top: 3}     # same storage
          - {study: flowers/mars-pgm, storage: "sqlite:///old.db"}   # another one
      l2-sp:
        alpha: {low: 1.0e-4, high: 1.0}
        start_from: []                           # none for this one

An entry names ``study`` (any Optuna study) or ``spec`` (the study ``<spec>/<method>``; the
only form the spec-level key takes), ``top`` (default 1) and ``storage`` (a URL as
``--storage`` takes it, relative paths from the working directory; default: the search's).

Each point is mapped by parameter name (:func:`map_params`): a parameter of the source the space
does not search is dropped; a parameter the space searches and the source lacks is left to the
sampler, as Optuna does with a partial ``enqueue_trial``; with ``groups: independent`` a source's
shared ``radius`` gives every ``radius.<group>``. A value outside the space is clipped into it
(:meth:`~tether.search.space.Param.nearest`: the nearest end of a range, the nearest numeric
choice); a trial whose value cannot be (a string that is not one of the choices) is skipped.
A point equal to an earlier one (after clipping) or to an ``enqueue`` point is enqueued once.
One line per source study says what was taken, clipped, dropped and skipped, and warns when the
source's radii were in other units (relative against absolute).

The points count in ``budget.n_trials`` as ``enqueue`` points do, and are read when the studies
are created (``tether run``), not when a worker joins; they are stored on the study
(:data:`START_ATTR`) with the study, trial and value each came from. They are starting points,
not the search space: not in the study's fingerprint, so changing them keeps the study.

Example:
    >>> from tether.search.space import FloatRange, MethodSpace
    >>> space = MethodSpace("mars-pgm", {"radius": FloatRange(0.01, 1.0)})
    >>> mapped = map_params(space, {"radius": 1.5, "lr": 0.01}, groups=[])
    >>> mapped.params, mapped.clipped, mapped.dropped
    ({'radius': 1.0}, {'radius': (1.5, 1.0)}, ('lr',))
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
import difflib
from typing import TYPE_CHECKING
from typing import Any

from tether.errors import ConfigError
from tether.finetune.config import from_dict
from tether.jsondata import json_safe
from tether.search.methods import GROUP_PREFIX
from tether.search.space import Choice
from tether.search.space import MethodSpace
from tether.search.storage.urls import mask_url


if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial


START_ATTR = "tether:start_from"
"""The study attribute with the points enqueued from earlier studies, and where each came from."""

_MISSING = object()


@dataclass(frozen=True)
class StartSource:
    """An earlier study whose best ``top`` complete trials start a method's search.

    Attributes:
        study: the study's name.
        top: how many of its best trials.
        storage: the storage URL holding it; None: the search's own storage.
    """

    study: str
    top: int = 1
    storage: str | None = None

    def describe(self) -> str:
        """The study, and its storage when not the search's (password masked)."""
        return self.study if self.storage is None else f"{self.study} in {mask_url(self.storage)}"

    def to_data(self) -> dict[str, Any]:
        """The YAML form, the storage's password masked (what is stored with the studies)."""
        data: dict[str, Any] = {"study": self.study, "top": self.top}
        if self.storage is not None:
            data["storage"] = mask_url(self.storage)
        return data


@dataclass(frozen=True)
class _Entry:
    study: str | None = None
    spec: str | None = None
    storage: str | None = None
    top: int = 1


def split_start_from(methods: object) -> tuple[object, dict[str, object]]:
    """The ``methods:`` data without the ``start_from`` keys, and those keys' values by method.

    Example:
        >>> split_start_from({"a": {"x": 1, "start_from": []}, "b": None})
        ({'a': {'x': 1}, 'b': None}, {'a': []})
    """
    if not isinstance(methods, Mapping):
        return methods, {}
    plain: dict[Any, Any] = {}
    found: dict[str, object] = {}
    for name, entry in methods.items():
        if isinstance(entry, Mapping) and "start_from" in entry:
            found[str(name)] = entry["start_from"]
            entry = {k: v for k, v in entry.items() if k != "start_from"}
        plain[name] = entry
    return plain, found


def start_sources(
    spaces: Mapping[str, MethodSpace], per_method: Mapping[str, object], default: object
) -> dict[str, tuple[StartSource, ...]]:
    """Each method's sources: its own ``start_from``, else the spec's (searched methods only).

    Args:
        spaces: the spec's methods.
        per_method: the methods' own ``start_from`` values (:func:`split_start_from`).
        default: the spec-level ``start_from``, whose entries name a ``spec``.

    Raises:
        ConfigError: naming the dotted key and what it accepts.
    """
    defaults = _entries(default, "start_from")
    if any(e.study is not None for e in defaults):
        raise ConfigError(
            "start_from: at the spec's level an entry names a spec (its study <spec>/<method> "
            "for each method); name a study under methods.<method>.start_from"
        )
    out: dict[str, tuple[StartSource, ...]] = {}
    for method, space in spaces.items():
        where = f"methods.{method}.start_from"
        if method in per_method:
            if not space.params and per_method[method] not in (None, []):
                raise ConfigError(f"{where}: {method} searches nothing, so it starts from nothing")
            entries = _entries(per_method[method], where)
        else:
            entries = defaults if space.params else []
        sources = tuple(_source(e, method) for e in entries)
        if sources:
            out[method] = sources
    return out


def _entries(data: object, where: str) -> list[_Entry]:
    """An entry or a list of them; null or [] is none."""
    if data is None:
        return []
    items = [data] if isinstance(data, Mapping) else data
    if not isinstance(items, list):
        raise ConfigError(
            f"{where} must be a list of {{study or spec, top, storage}}, got {data!r}"
        )
    entries = []
    for i, item in enumerate(items):
        key = f"{where}[{i}]"
        entry = from_dict(_Entry, item, prefix=f"{key}.")
        if (entry.study is None) == (entry.spec is None):
            raise ConfigError(f"{key} must name a study or a spec (one of them), got {item!r}")
        for name in ("study", "spec", "storage"):
            value = getattr(entry, name)
            if value is not None and not value.strip():
                raise ConfigError(f"{key}.{name} must not be empty")
        if entry.top < 1:
            raise ConfigError(f"{key}.top must be >= 1, got {entry.top!r}")
        entries.append(entry)
    return entries


def _source(entry: _Entry, method: str) -> StartSource:
    study = entry.study if entry.study is not None else f"{entry.spec}/{method}"
    return StartSource(study=study, top=entry.top, storage=entry.storage)


# --- from a trial to a point of the space -----------------------------------------------------


@dataclass(frozen=True)
class Mapped:
    """One source trial's parameters in a space: the point (None if skipped) and what changed.

    Attributes:
        params: the Optuna parameters to enqueue; None when the trial cannot be mapped.
        clipped: the values clipped into the space, ``{name: (from, to)}``.
        dropped: the source's parameters the space does not search.
        skipped: why the trial was skipped (empty when it was not).
    """

    params: dict[str, Any] | None
    clipped: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    dropped: tuple[str, ...] = ()
    skipped: str = ""

    def told(self, trial: int, seen: Sequence[Mapping[str, Any]]) -> tuple[bool, str]:
        """Whether source trial ``trial``'s point is taken (mapped, not in ``seen``), and
        what to tell of it (empty: nothing).

        Example:
            >>> Mapped({"radius": 1.0}, clipped={"radius": (1.5, 1.0)}).told(4, seen=[])
            (True, 'trial 4 clipped into the spec: radius 1.5 -> 1')
        """
        if self.params is None:
            return False, f"skipped trial {trial} ({self.skipped})"
        if not self.params:
            return False, f"skipped trial {trial} (no parameter of this space)"
        if self.params in seen:
            return False, f"trial {trial} already enqueued"
        moves = ", ".join(f"{k} {_short(v)} -> {_short(b)}" for k, (v, b) in self.clipped.items())
        return True, f"trial {trial} clipped into the spec: {moves}" if moves else ""


def map_params(space: MethodSpace, params: Mapping[str, Any], *, groups: Sequence[str]) -> Mapped:
    """A source trial's ``params`` as a point of ``space`` (see the module docstring).

    Example:
        >>> from tether.search.space import FloatRange, MethodSpace
        >>> space = MethodSpace(
        ...     "pgm", {"norm": Choice(("mars", "frob")), "radius": FloatRange(0.01, 1.0)}
        ... )
        >>> map_params(space, {"norm": "l2", "radius": 0.1}, groups=[]).skipped
        "norm 'l2' is not one of 'mars', 'frob'"
    """
    independent = space.groups == "independent"
    out: dict[str, Any] = {}
    clipped: dict[str, tuple[Any, Any]] = {}
    for name, param in space.trial_params(groups).items():
        value = params.get(name, _MISSING)
        if value is _MISSING and independent and name.startswith(GROUP_PREFIX):
            value = params.get("radius", _MISSING)
        if value is _MISSING:
            continue  # left to the sampler
        if param.contains(value):
            out[name] = value
            continue
        numeric_choices = not isinstance(param, Choice) or any(
            type(c) in (int, float) for c in param.choices
        )
        if not (_is_number(value) and numeric_choices):
            return Mapped(None, skipped=f"{name} {value!r} is not {param.describe()}")
        out[name] = param.nearest(value)
        clipped[name] = (value, out[name])
    names = space.trial_params(groups)
    dropped = tuple(n for n in params if n not in names and not (independent and n == "radius"))
    return Mapped(out, clipped, dropped)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --- the best trials of the sources -----------------------------------------------------------


def best_trials(study: optuna.Study, top: int) -> list[FrozenTrial]:
    """The ``top`` best complete trials of a single-objective ``study``, best first; of equal
    values, the lower number first. Direction-aware: a minimised study's lowest values."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
    complete = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None
    ]
    return sorted(complete, key=lambda t: (sign * float(t.value or 0.0), t.number))[:top]


@dataclass(frozen=True)
class StartPoint:
    """A point enqueued from an earlier study, and where it came from."""

    params: dict[str, Any]
    study: str
    trial: int
    value: float
    storage: str | None = None

    def to_data(self) -> dict[str, Any]:
        """JSON-safe, the storage's password masked (what :data:`START_ATTR` holds)."""
        data = {"study": self.study, "trial": self.trial, "value": self.value}
        if self.storage is not None:
            data["storage"] = mask_url(self.storage)
        return json_safe({**data, "params": self.params})


class SourceStorages:
    """The storages the sources name, each opened once and closed at the end (a context).

    ``default`` is the search's own storage, used for a source without ``storage``.
    """

    def __init__(self, default: optuna.storages.BaseStorage) -> None:
        self.default = default
        self._opened: dict[str, optuna.storages.BaseStorage] = {}

    def __enter__(self) -> SourceStorages:
        return self

    def __exit__(self, *exc: object) -> None:
        from tether.search.storage import backend_of

        for storage in self._opened.values():
            engine = getattr(backend_of(storage), "engine", None)
            if engine is not None:
                engine.dispose()
        self._opened.clear()

    def study(self, source: StartSource, where: str) -> optuna.Study:
        """The source's study, checked to be one to start from.

        Raises:
            ConfigError: the storage cannot be opened, the study is not in it, has several
                objectives or no complete trial; one line, password masked.
        """
        import optuna

        from tether.search.storage import open_storage
        from tether.search.storage import storage_url
        from tether.search.storage import study_names

        storage = self.default
        if source.storage is not None:
            if source.storage not in self._opened:
                try:
                    self._opened[source.storage] = open_storage(source.storage, create=False)
                except ConfigError as error:  # a missing file is not created for a source
                    message = str(error).removesuffix("; tether run creates it")
                    raise ConfigError(f"{where}: {message}", kind=error.kind) from None
            storage = self._opened[source.storage]
        url = mask_url(source.storage) if source.storage is not None else storage_url(storage)
        names = study_names(storage)
        if source.study not in names:
            close = difflib.get_close_matches(source.study, sorted(names), n=1)
            hint = f"; did you mean {close[0]}?" if close else f" ({len(names)} studies there)"
            raise ConfigError(f"{where}: study {source.study} does not exist in {url}{hint}")
        study = optuna.load_study(study_name=source.study, storage=storage)
        if len(study.directions) > 1:
            raise ConfigError(
                f"{where}: study {source.study} in {url} has {len(study.directions)} "
                "objectives; start from a single-objective study"
            )
        if not best_trials(study, 1):
            raise ConfigError(
                f"{where}: study {source.study} in {url} has no complete trial to start from"
            )
        return study


def start_points(
    sources: Sequence[StartSource],
    *,
    target: str,
    space: MethodSpace,
    groups: Sequence[str],
    storages: SourceStorages,
    relative: bool | None = None,
) -> tuple[list[StartPoint], list[str]]:
    """The points that start ``space``'s search, from the best trials of ``sources``.

    Args:
        sources: the method's sources, in order (their points are enqueued in that order).
        target: the study they start (for the lines).
        space: its search space.
        groups: the model's pretrained layer groups.
        storages: opens the sources' storages.
        relative: whether the space's radii are relative (None: unknown, no unit check).

    Returns:
        The points (best first within a source; none repeated, none equal to an ``enqueue``
        point), and one line per source for the log.

    Raises:
        ConfigError: a source cannot be read (see :meth:`SourceStorages.study`), or its
            trials share no parameter with the space.
    """
    where = f"methods.{space.method}.start_from"
    seen = [space.enqueue_params(point, groups=groups) for point in space.enqueue]
    points: list[StartPoint] = []
    lines = []
    for source in sources:
        study = storages.study(source, where)
        best = best_trials(study, source.top)
        mapped = [map_params(space, t.params, groups=groups) for t in best]
        if all(m.params == {} for m in mapped):
            searched = ", ".join(space.trial_params(groups)) or "nothing"
            raise ConfigError(
                f"{where}: study {source.study} shares no parameter with {space.method} "
                f"(it searches {searched}; the study's best trial has "
                f"{', '.join(best[0].params) or 'none'})"
            )
        notes, taken = [], []
        for trial, point in zip(best, mapped, strict=True):
            took, note = point.told(trial.number, seen)
            notes += [note] if note else []
            if took and point.params is not None:
                seen.append(point.params)
                taken.append(trial.number)
                value = float(trial.value or 0.0)
                points.append(
                    StartPoint(point.params, source.study, trial.number, value, source.storage)
                )
        dropped = dict.fromkeys(n for m in mapped for n in m.dropped)
        if dropped:
            notes.append(f"not searched here: {', '.join(dropped)}")
        notes += [_units_note(study, relative, mapped)]
        lines.append(_line(target, source, taken, len(best), notes))
    return points, lines


def _line(
    target: str, source: StartSource, taken: Sequence[int], n_best: int, notes: Sequence[str]
) -> str:
    trials = f"trial{'s' * (len(taken) != 1)} {', '.join(map(str, taken))}"
    head = f"[{target}] starts from {source.describe()}: {trials if taken else 'no new point'}"
    count = f" (its best {n_best})" if n_best > 1 else ""
    return "; ".join([head + count, *filter(None, notes)])


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _units_note(study: optuna.Study, relative: bool | None, mapped: Sequence[Mapped]) -> str:
    """A warning when the source's radii were relative and the space's absolute, or back."""
    radii = any(
        n == "radius" or n.startswith(GROUP_PREFIX) for m in mapped for n in (m.params or {})
    )
    theirs = _stored_relative(study)
    if relative is None or theirs is None or not radii or theirs == relative:
        return ""
    units = {True: "relative", False: "absolute"}
    return f"beware: its radii were {units[theirs]}, this space's are {units[relative]}"


def _stored_relative(study: optuna.Study) -> bool | None:
    """Whether a Tether study's radii were relative (its stored spec); None if unknown."""
    from tether.search.execution.studies import SPEC_ATTR

    stored = study.user_attrs.get(SPEC_ATTR)
    if not isinstance(stored, Mapping):
        return None
    method = study.study_name.removeprefix(f"{stored.get('name')}/")
    entry = (stored.get("methods") or {}).get(method)
    if not isinstance(entry, Mapping):
        return None
    relative = entry.get("relative")
    if relative is None:
        relative = ((stored.get("base_recipe") or {}).get("constraint") or {}).get("relative")
    return relative if isinstance(relative, bool) else None


def point_params(study: optuna.Study) -> list[dict[str, Any]]:
    """The parameters of the points a study's creation took from earlier studies, in order."""
    return [dict(p["params"]) for p in study.user_attrs.get(START_ATTR) or []]
