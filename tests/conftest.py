"""Fixtures shared by the whole suite: one on-disk cache, so the digits source network is
pretrained once per session, and a tiny digits recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


ROOT = Path(__file__).resolve().parents[1]
"""The repository: configs/, studies/ and deploy/ are read from it."""


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tether-cache")


def tiny_digits_recipe(**train: Any) -> dict[str, Any]:
    """A digits recipe that trains in well under a second per epoch on a CPU."""
    return {
        "name": "tiny",
        "model": {"name": "digits-cnn", "weights": "digits-source"},
        "data": {"kind": "digits", "shots": 5, "val_shots": 3},
        "train": {"lr": 1e-3, "epochs": 2, "batch_size": 16, "lr_step": 0, **train},
        "constraint": {"norm": "mars", "radius": 0.5, "relative": True, "head_radius": 5.0},
    }


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The PostgreSQL test server: ``$TETHER_TEST_POSTGRES_URL`` (CI sets it and needs it)."""
    import os

    url = os.environ.get("TETHER_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("CI must set TETHER_TEST_POSTGRES_URL (PostgreSQL tests may not skip)")
        pytest.skip("set TETHER_TEST_POSTGRES_URL to run the PostgreSQL tests")
    return url
