"""The base of every ``tether`` verb (its own module so verb modules and the parser share it)."""

from __future__ import annotations

import abc
import argparse


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
