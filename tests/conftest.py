"""What the whole suite shares: the repository's root, one on-disk cache (the digits source
network is pretrained once per session) and the PostgreSQL test server."""

from __future__ import annotations

from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
"""The repository: configs/, studies/ and deploy/ are read from it."""


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tether-cache")


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
