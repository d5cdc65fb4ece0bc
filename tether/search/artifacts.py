"""Each trial's log file and epoch curve, attached to it as Optuna artifacts.

optuna-dashboard lists a trial's artifacts on its page, shows a log as text and a CSV as a
table, and ``optuna.artifacts.get_all_artifact_meta(trial, storage=...)`` lists them for a
script: the log and the curve of any trial, read from any machine that sees the storage and
the artifact folder, without a shell on the worker that ran it.

A search uploads two files per trial once its worker process has exited, before the result is
told (Optuna attaches files only to a running trial): ``trial-00007.log`` (the worker's stdout
and stderr) and ``trial-00007-curve.csv`` (the ``curve`` user attribute: one row per epoch).
An upload that fails logs one warning, the first time, and never fails the trial.

The files go to an :class:`optuna.artifacts.FileSystemArtifactStore`, a folder. The spec's
``artifacts:`` names it (relative to the working directory, like ``--storage``; ``false``: no
uploads). By default it lies next to the storage (:func:`default_artifact_dir`):

==============================  ==========================================================
``sqlite:///runs/x.db``         ``runs/x-artifacts/``
``journal:./runs/x.journal``    ``runs/x-artifacts/``
a server (``postgresql+...``)   ``tether-artifacts/`` in the working directory
==============================  ==========================================================

Workers on several machines need a folder they all see (a shared filesystem) for the
dashboard to open every trial's files: set ``artifacts:`` to it (``--set artifacts=PATH`` where
it is mounted elsewhere). ``tether dashboard`` serves the default folder of its storage, or
``--artifacts PATH``.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
import csv
import io
import json
import logging
import os
from pathlib import Path
import tempfile
import threading
from typing import Any
from typing import Protocol

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts import upload_artifact

from tether.errors import ConfigError
from tether.search.storage import describe_error


__all__ = [
    "DEFAULT_DIR",
    "ArtifactUploader",
    "NoArtifacts",
    "TrialArtifacts",
    "artifact_dir",
    "curve_csv",
    "default_artifact_dir",
    "trial_artifacts",
]

_log = logging.getLogger(__name__)

DEFAULT_DIR = "tether-artifacts"
"""The artifact folder, in the working directory, of a storage that is not a file."""


def default_artifact_dir(url: str) -> Path:
    """The artifact folder of the storage at ``url``: beside its file, named after it.

    Example:
        >>> str(default_artifact_dir("sqlite:///runs/digits.db"))
        'runs/digits-artifacts'
        >>> str(default_artifact_dir("sqlite:////data/tether.db"))
        '/data/tether-artifacts'
        >>> str(default_artifact_dir("journal:./runs/x.journal"))
        'runs/x-artifacts'
        >>> str(default_artifact_dir("postgresql+psycopg://tether:***@db/search"))
        'tether-artifacts'
    """
    path: str | None = None
    if url.startswith("journal:"):
        path = url.removeprefix("journal:").removeprefix("//")
    elif url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///").split("?", 1)[0]
        path = None if path in ("", ":memory:") else path
    if not path:
        return Path(DEFAULT_DIR)
    file = Path(path)
    return file.with_name(f"{file.stem}-artifacts")


def artifact_dir(setting: str | bool, url: str) -> Path | None:
    """The folder the spec's ``artifacts:`` names for the storage at ``url``: ``true``, the
    default (:func:`default_artifact_dir`); ``false``, none; else the path it gives.

    Example:
        >>> artifact_dir(True, "sqlite:///x.db"), artifact_dir(False, "sqlite:///x.db")
        (PosixPath('x-artifacts'), None)
        >>> artifact_dir("/shared/artifacts", "sqlite:///x.db")
        PosixPath('/shared/artifacts')
    """
    if setting is False:
        return None
    if setting is True:
        return default_artifact_dir(url)
    return Path(os.path.expanduser(setting))


def curve_csv(curve: Sequence[Mapping[str, Any]]) -> str:
    """The epoch curve as CSV: one row per epoch, a column per key in the order first seen;
    an empty cell where an epoch has no value, JSON where a value is not a scalar.

    Example:
        >>> print(curve_csv([{"epoch": 1, "val_accuracy": 0.5}, {"epoch": 2, "lr": None}]), end="")
        epoch,val_accuracy,lr
        1,0.5,
        2,,
    """
    columns = list(dict.fromkeys(key for row in curve for key in row))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    if columns:
        writer.writerow(columns)
    for row in curve:
        writer.writerow([_cell(row.get(column)) for column in columns])
    return text.getvalue()


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


class ArtifactUploader(Protocol):
    """What a search gives each trial's log and curve when its worker has exited."""

    def upload(
        self, trial: optuna.Trial, *, log_path: Path, curve: Sequence[Mapping[str, Any]]
    ) -> None:
        """Attach the files to ``trial`` (still running); never raise."""


class NoArtifacts:
    """``artifacts: false``: nothing is uploaded."""

    def upload(
        self, trial: optuna.Trial, *, log_path: Path, curve: Sequence[Mapping[str, Any]]
    ) -> None:
        """Upload nothing."""


class TrialArtifacts:
    """Upload a trial's log and curve to the artifact folder ``folder`` (created here).

    Args:
        folder: the folder of a :class:`~optuna.artifacts.FileSystemArtifactStore`.

    Raises:
        ConfigError: the folder cannot be created.
    """

    def __init__(self, folder: Path) -> None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(
                f"artifacts: cannot create the folder {folder} ({error.strerror}); name "
                "another (artifacts: PATH) or set artifacts: false"
            ) from None
        self.folder = folder
        self.store = FileSystemArtifactStore(folder)
        self.failures = 0
        self._lock = threading.Lock()

    def upload(
        self, trial: optuna.Trial, *, log_path: Path, curve: Sequence[Mapping[str, Any]]
    ) -> None:
        """Attach ``log_path`` and the curve (as ``trial-NNNNN-curve.csv``) to ``trial``,
        which must still be running; never raises (see the module docstring)."""
        try:
            upload_artifact(
                artifact_store=self.store,
                file_path=str(log_path),
                study_or_trial=trial,
                mimetype="text/plain",
            )
            with tempfile.TemporaryDirectory(prefix="tether-curve-") as scratch:
                path = Path(scratch) / f"trial-{trial.number:05d}-curve.csv"
                path.write_text(curve_csv(curve), encoding="utf-8")
                upload_artifact(
                    artifact_store=self.store,
                    file_path=str(path),
                    study_or_trial=trial,
                    mimetype="text/csv",
                )
        except Exception as error:
            with self._lock:
                self.failures += 1
                first = self.failures == 1
            if first:
                _log.warning(
                    "tether: trial %d of %s: its log and curve were not uploaded to %s "
                    "(%s: %s); the trial is recorded without them, and later upload "
                    "failures are not reported",
                    trial.number,
                    trial.study.study_name,
                    self.folder,
                    type(error).__name__,
                    describe_error(error),
                )


def trial_artifacts(setting: str | bool, url: str) -> ArtifactUploader:
    """The uploader of the spec's ``artifacts:`` setting for the storage at ``url``
    (:func:`artifact_dir`); :class:`NoArtifacts` for ``false``.

    Raises:
        ConfigError: the folder cannot be created.
    """
    folder = artifact_dir(setting, url)
    return NoArtifacts() if folder is None else TrialArtifacts(folder)
