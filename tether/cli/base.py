"""What every ``tether`` verb shares: the command base, exit codes, spec and device options.

Nothing heavy is imported here or by any verb module at import time: ``tether --help`` builds
the whole parser from these modules alone, and each verb imports Optuna, torch or plotly in
its ``run`` when (and only if) it needs them.
"""

from __future__ import annotations

import abc
import argparse
from collections.abc import Iterator
import contextlib
import sys
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    import optuna

    from tether.search.spec import StudySpec


EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143
DEFAULT_BASELINE = "standard"
QUIET, NORMAL, VERBOSE = -1, 0, 1
"""How much a verb says on stderr: ``-q``, neither flag, ``-v`` (see :func:`verbosity`)."""


class Command(abc.ABC):
    """A verb of the ``tether`` command; the class docstring is its ``--help``."""

    name: str

    @abc.abstractmethod
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare the verb's arguments."""

    @abc.abstractmethod
    def run(self, args: argparse.Namespace) -> int:
        """Do the work; return the exit code."""


def add_set_argument(parser: argparse.ArgumentParser, *, what: str, example: str) -> None:
    """``--set KEY=VALUE`` (repeatable): override a value of ``what`` by its dotted path."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a {what} value by its dotted path, e.g. --set {example}",
    )


def add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    """The spec, ``--set`` into it, and which of its methods and conditions to act on."""
    parser.add_argument("spec", help="a study spec, e.g. studies/digits.yaml")
    add_set_argument(parser, what="spec", example="budget.n_trials=4")
    parser.add_argument(
        "--methods", nargs="+", default=None, metavar="METHOD", help="only these methods"
    )
    parser.add_argument(
        "--conditions",
        nargs="+",
        default=None,
        metavar="CONDITION",
        help="only these conditions of a spec with conditions: (e.g. noise rates)",
    )


def add_baseline_argument(parser: argparse.ArgumentParser) -> None:
    """``--baseline METHOD``: the method every other is paired with, seed by seed."""
    parser.add_argument(
        "--baseline",
        default=None,
        metavar="METHOD",
        help=f"the method the others are compared with, paired by evaluation seed "
        f"(default: {DEFAULT_BASELINE}, where the spec has it)",
    )


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """Where trials run (``--devices``, ``--trials-per-device``), how they start, their logs."""
    parser.add_argument(
        "--devices",
        default="auto",
        help="auto (every visible GPU, else the CPU), cpu, or GPU indices like 0,1",
    )
    parser.add_argument(
        "--trials-per-device", type=int, default=1, help="concurrent trials on each device"
    )
    parser.add_argument(
        "--launcher",
        choices=("fork", "subprocess"),
        default="fork",
        help="start trials from a server that has imported torch (fork), or a fresh interpreter",
    )
    parser.add_argument("--log-dir", default="tether-logs", help="one log file per trial")
    parser.add_argument("--cache-dir", default=None, help="default: $TETHER_CACHE_DIR")


def load_selected(args: argparse.Namespace) -> list[StudySpec]:
    """The spec's conditions (one spec if it has none) that ``--conditions`` selects, with
    ``--methods``, ``--baseline`` and the device flags checked; nothing is opened or printed.

    Raises:
        ConfigError: a bad spec, condition, method, baseline or device flag.
    """
    from tether.search.spec import load_specs

    specs = _conditions(load_specs(args.spec, args.overrides), args)
    selected_methods(specs[0], args)
    if hasattr(args, "baseline"):
        selected_baseline(specs[0], args.baseline)
    if hasattr(args, "devices"):
        from tether.search.execution.slots import parse_devices

        parse_devices(args.devices, args.trials_per_device)
    return specs


def selected_methods(spec: StudySpec, args: argparse.Namespace) -> list[str] | None:
    """The methods ``--methods`` selects (every condition of a spec has the same methods);
    None: all of them.

    Raises:
        ConfigError: ``--methods`` names a method the spec does not have.
    """
    from tether.errors import ConfigError

    if getattr(args, "methods", None) is None:
        return None
    known = list(spec.methods)
    unknown = [m for m in args.methods if m not in known]
    if unknown:
        raise ConfigError(
            f"--methods names {unknown[0]!r}, which the spec does not have; "
            f"it has {', '.join(known)}"
        )
    return list(args.methods)


def selected_baseline(spec: StudySpec, name: str | None) -> str | None:
    """The method the others are paired with: ``name`` (``--baseline``), else ``standard``
    where the spec has it, else None (no pairing).

    Raises:
        ConfigError: ``name`` is not a method of the spec.
    """
    from tether.errors import ConfigError

    if name is None:
        return DEFAULT_BASELINE if DEFAULT_BASELINE in spec.methods else None
    if name not in spec.methods:
        raise ConfigError(
            f"--baseline names {name!r}, which the spec does not have; "
            f"it has {', '.join(spec.methods)}"
        )
    return name


def _conditions(specs: list[StudySpec], args: argparse.Namespace) -> list[StudySpec]:
    from tether.errors import ConfigError

    if args.conditions is None:
        return specs
    known = [s.condition for s in specs if s.condition is not None]
    if not known:
        raise ConfigError(f"--conditions given, but study spec {args.spec} has no conditions")
    unknown = [c for c in args.conditions if c not in known]
    if unknown:
        raise ConfigError(
            f"--conditions names {unknown[0]!r}, which the spec does not have; "
            f"it has {', '.join(known)}"
        )
    return [s for s in specs if s.condition in args.conditions]


def storage_line(args: argparse.Namespace) -> None:
    """The storage (password masked) on stderr, once the input has been checked."""
    from tether.progress import progress
    from tether.search.storage.urls import mask_url
    from tether.search.storage.urls import resolve_url

    progress(f"storage: {mask_url(resolve_url(args.storage))}")


def open_selected(
    args: argparse.Namespace, *, every: bool
) -> tuple[list[StudySpec], optuna.storages.BaseStorage]:
    """For a verb that works on existing studies: :func:`load_selected`, the storage (which
    must exist), the studies (``every`` selected one, or at least one), then the storage line.

    Raises:
        ConfigError: bad input, a missing storage, or missing studies.
    """
    from tether.search.execution.studies import require_studies
    from tether.search.storage import open_storage
    from tether.search.storage import resolve_url

    specs = load_selected(args)
    storage = open_storage(resolve_url(args.storage), create=False)
    require_studies(specs, storage, selected_methods(specs[0], args), every=every)
    storage_line(args)
    return specs, storage


def add_verbosity_arguments(parser: argparse.ArgumentParser, *, default: object) -> None:
    """``-q`` / ``-v``: say less or more on stderr (see :func:`verbosity`); ``default`` is
    :data:`NORMAL` on the ``tether`` parser, ``argparse.SUPPRESS`` on a verb's, so that either
    place works."""
    flags = parser.add_mutually_exclusive_group()
    flags.add_argument(
        "-q",
        "--quiet",
        dest="verbosity",
        action="store_const",
        const=QUIET,
        default=default,
        help="print only results, warnings and errors: no progress lines",
    )
    flags.add_argument(
        "-v",
        "--verbose",
        dest="verbosity",
        action="store_const",
        const=VERBOSE,
        default=default,
        help="print debug lines too, and Optuna's own log lines",
    )


@contextlib.contextmanager
def verbosity(level: int) -> Iterator[None]:
    """While a verb runs, say on stderr what ``level`` asks for; as it was afterwards.

    The levels of Optuna's own command line: :data:`NORMAL` shows the progress lines
    (:mod:`tether.progress`) and the records of the ``tether`` loggers from INFO, and
    Optuna's from WARNING (its line per study created is noise beside tether's own).
    :data:`VERBOSE` (``-v``) shows tether's from DEBUG and Optuna's from INFO. :data:`QUIET`
    (``-q``) leaves the results (stdout), the warnings and the errors: no progress lines,
    records from WARNING. Warnings, errors and prompts are printed whatever the level.
    """
    import logging

    import optuna

    from tether.progress import LOGGER as progress_logger

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("tether")
    saved = logger.level, progress_logger.level, optuna.logging.get_verbosity()
    logger.setLevel({QUIET: logging.WARNING, NORMAL: logging.INFO}.get(level, logging.DEBUG))
    progress_logger.setLevel(logging.WARNING if level <= QUIET else logging.INFO)
    logger.addHandler(handler)
    optuna.logging.set_verbosity(logging.INFO if level >= VERBOSE else logging.WARNING)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        progress_logger.setLevel(saved[1])
        optuna.logging.set_verbosity(saved[2])
