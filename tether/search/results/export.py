"""Every trial of a spec's studies as one table, for pandas: what ``tether export`` writes.

One row per trial, with the columns of :meth:`optuna.study.Study.trials_dataframe` (``number``,
``value``, ``datetime_start``, ``datetime_complete``, ``duration``, ``params_<name>``,
``user_attrs_<key>``, ``state`` as its name) after five that say whose trial it is: ``study``,
``spec`` (the spec file's name), ``condition``, ``repeat`` and ``method``. Of the user
attributes a worker keeps (:mod:`tether.search.execution.trials`), every scalar (``seconds``,
``device``, ``host``, ``test_accuracy``, ...) is a column, and so is every number inside
:data:`FLATTENED` (``user_attrs_distances_<group>``,
``user_attrs_learned_radii_absolute_<group>``, ``user_attrs_error_kind``, ...). The curve,
the recipe and the versions stay in the storage, where optuna-dashboard shows them.

CSV or Parquet, by the file's suffix (:data:`SUFFIXES`), written whole or not at all; both
need pandas, Parquet pyarrow too: the ``export`` extra.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from pathlib import Path
import sys
from typing import TYPE_CHECKING
from typing import Any

from tether.errors import ConfigError


if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from tether.search.spec import StudySpec


SUFFIXES = {".csv": "csv", ".parquet": "parquet"}
"""The file suffixes :func:`write_trials` knows, and the format each means."""

STDOUT = "-"
"""The output that is CSV on stdout."""

FLATTENED = ("distances", "distances_frob", "learned_radii", "probe", "wise", "error")
"""The user attributes that are mappings and whose scalars become columns, key by key."""

OWNER_COLUMNS = ("study", "spec", "condition", "repeat", "method")
TRIAL_COLUMNS = ("number", "value", "datetime_start", "datetime_complete", "duration")


def export_format(output: str) -> str:
    """The format ``output`` asks for: ``csv`` or ``parquet`` by its suffix; CSV on stdout
    for :data:`STDOUT`.

    Raises:
        ConfigError: an unknown suffix.

    Example:
        >>> export_format("runs/trials.parquet"), export_format("-")
        ('parquet', 'csv')
    """
    if output == STDOUT:
        return "csv"
    suffix = Path(output).suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(
            f"cannot tell the format of {output}: its suffix must be "
            f"{' or '.join(SUFFIXES)}, or give - for CSV on stdout"
        )
    return SUFFIXES[suffix]


def require_writer(fmt: str) -> None:
    """Check that the packages ``fmt`` needs are installed: pandas, and pyarrow for Parquet.

    Raises:
        ConfigError: one is missing; the message names the extra to install.
    """
    needed = ["pandas", "pyarrow"] if fmt == "parquet" else ["pandas"]
    for package in needed:
        try:
            __import__(package)
        except ImportError:
            raise ConfigError(
                f"tether export to {fmt} needs {package}: install tether[export]"
            ) from None


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    """The scalars inside ``value`` (nested mappings), each named by its keys joined with
    ``_`` after ``prefix``; lists are left out.

    Example:
        >>> flatten("user_attrs_learned_radii", {"absolute": {"block1": 0.3}, "n": [1, 2]})
        {'user_attrs_learned_radii_absolute_block1': 0.3}
    """
    if isinstance(value, Mapping):
        columns: dict[str, Any] = {}
        for key, inner in value.items():
            columns.update(flatten(f"{prefix}_{key}", inner))
        return columns
    if value is None or isinstance(value, str | int | float | bool):
        return {prefix: value}
    return {}


def trial_record(trial: FrozenTrial) -> dict[str, Any]:
    """One trial's columns, from ``number`` on (see the module's docstring)."""
    start, complete = trial.datetime_start, trial.datetime_complete
    record: dict[str, Any] = {
        "number": trial.number,
        "value": trial.value,
        "datetime_start": start,
        "datetime_complete": complete,
        "duration": None if start is None or complete is None else complete - start,
    }
    record.update({f"params_{name}": value for name, value in trial.params.items()})
    for key, value in trial.user_attrs.items():
        if key in FLATTENED or not isinstance(value, Mapping | list):
            record.update(flatten(f"user_attrs_{key}", value))
    record["state"] = trial.state.name
    return record


def trial_records(
    specs: Sequence[StudySpec],
    storage: optuna.storages.BaseStorage,
    methods: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """A row for each trial of each condition's, repeat's and (selected) method's study in
    ``storage``, in the spec's order, then by trial number; the studies not created have none.
    """
    from tether.search.execution.studies import find_studies

    records = []
    for spec, method, study in find_studies(specs, storage, methods):
        if study is None:
            continue
        owner = {
            "study": study.study_name,
            "spec": spec.family,
            "condition": spec.condition,
            "repeat": spec.repeat,
            "method": method,
        }
        trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
        records += [{**owner, **trial_record(t)} for t in trials]
    return records


def trials_frame(records: Sequence[Mapping[str, Any]]) -> Any:
    """``records`` as a ``pandas.DataFrame``, its columns in the order of
    ``trials_dataframe``: who, the trial, ``params_*`` and ``user_attrs_*`` by name, ``state``.

    A column whose values differ in type from study to study (a parameter that is a number in
    one, a word in another) holds them as text, which Parquet can store.
    """
    import pandas as pd

    frame = pd.DataFrame.from_records(list(records))
    names = set(frame.columns)
    frame = frame.reindex(
        columns=[
            *OWNER_COLUMNS,
            *TRIAL_COLUMNS,
            *sorted(c for c in names if c.startswith("params_")),
            *sorted(c for c in names if c.startswith("user_attrs_")),
            "state",
        ]
    )
    for column in frame.columns:
        kinds = {type(v) for v in frame[column] if v is not None and v == v}  # v != v: NaN
        if len(kinds) > 1 and not kinds <= {int, float, bool}:
            frame[column] = [None if v is None or v != v else str(v) for v in frame[column]]
    return frame


def write_trials(records: Sequence[Mapping[str, Any]], output: str) -> None:
    """Write ``records`` (:func:`trial_records`) to ``output``, in the format of its suffix
    (:func:`export_format`), replacing the file at once when it is written; CSV on stdout for
    :data:`STDOUT`.

    Raises:
        ConfigError: an unknown suffix, or pandas (pyarrow for Parquet) is not installed.
    """
    from tether.files import atomic_write

    fmt = export_format(output)
    require_writer(fmt)
    frame = trials_frame(records)
    if output == STDOUT:
        frame.to_csv(sys.stdout, index=False)
    elif fmt == "csv":
        atomic_write(Path(output), lambda f: frame.to_csv(f, index=False, mode="wb"))
    else:
        atomic_write(Path(output), lambda f: frame.to_parquet(f, index=False))
