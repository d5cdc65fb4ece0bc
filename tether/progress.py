"""Progress lines: what a long command says on stderr while it works.

A progress line (a finished trial with ``k/N``, best and ETA; a finished epoch; the storage a
verb opened) is printed as it is, on stderr, while the ``tether.progress`` logger is enabled
for INFO, which it is by default. ``tether -q`` turns it down to WARNING; a script does the
same with ``logging.getLogger("tether.progress").setLevel(logging.WARNING)``. Warnings and
errors are not progress: they are printed whatever the level.

Example:
    >>> import contextlib, io, logging
    >>> err = io.StringIO()
    >>> with contextlib.redirect_stderr(err):
    ...     progress("[s] trial 0: val 90.0%")
    ...     LOGGER.setLevel(logging.WARNING)
    ...     progress("dropped")
    ...     LOGGER.setLevel(logging.INFO)
    >>> err.getvalue()
    '[s] trial 0: val 90.0%\\n'
"""

from __future__ import annotations

import logging
import sys


LOGGER = logging.getLogger("tether.progress")
"""Its level says whether progress lines are printed (INFO, the default) or not."""
LOGGER.setLevel(logging.INFO)
LOGGER.propagate = False  # the lines are printed here, not by a handler


def progress(line: str) -> None:
    """Print ``line`` on stderr, unless progress is turned down (``tether -q``)."""
    if LOGGER.isEnabledFor(logging.INFO):
        print(line, file=sys.stderr, flush=True)
