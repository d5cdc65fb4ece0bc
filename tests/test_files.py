"""Files written whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.files import atomic_write


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_litter(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "entry.bin"
    atomic_write(path, lambda handle: handle.write(b"old"))

    def broken(handle: object) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_bytes() == b"old"
    assert [p.name for p in path.parent.iterdir()] == ["entry.bin"]
