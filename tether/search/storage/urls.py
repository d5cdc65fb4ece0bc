"""Storage URLs: which one a command uses, and how it is shown (password masked).

Imports nothing but the standard library, so that a command can name its storage before (or
without) importing Optuna and SQLAlchemy.
"""

from __future__ import annotations

import os
import re


DEFAULT_URL = "sqlite:///tether.db"
ENV_VAR = "TETHER_STORAGE"

_PASSWORD = re.compile(r"(?P<head>[a-z0-9+.-]+://[^:/@]+:)(?P<password>[^@]*)(?P<tail>@)", re.I)


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***``: what every message, log line and
    stored attribute shows.

    Example:
        >>> mask_url("postgresql+psycopg://tether:secret@db/x")
        'postgresql+psycopg://tether:***@db/x'
    """
    return _PASSWORD.sub(r"\g<head>***\g<tail>", url)


def resolve_url(url: str | None) -> str:
    """The storage URL: the argument, else ``$TETHER_STORAGE``, else ``sqlite:///tether.db``."""
    return url or os.environ.get(ENV_VAR) or DEFAULT_URL
