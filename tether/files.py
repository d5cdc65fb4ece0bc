"""Files written whole or not at all: the on-disk caches every trial process shares.

Several trial processes may compute the same cache entry (the digits source network, decoded
images, DELTA's channel weights, a Fisher diagonal) at the same moment. Each writes a
temporary file in the entry's folder and renames it into place, which is atomic on POSIX: a
reader sees the old entry, or the whole new one, never half of one.
"""

from __future__ import annotations

from collections.abc import Callable
import os
from pathlib import Path
import tempfile
from typing import BinaryIO


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Create or replace ``path`` with what ``write(file)`` writes, atomically.

    The folder is created if needed. If ``write`` fails, ``path`` is left as it was and the
    temporary file is removed.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> atomic_write(folder / "cache" / "a.txt", lambda f: f.write(b"done"))
        >>> (folder / "cache" / "a.txt").read_bytes()
        b'done'
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
