"""optuna-dashboard serving a real search's storage, opened in headless Chromium."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tests.browser.conftest import FinishedSearch
from tests.browser.conftest import serving_dashboard
from tests.browser.conftest import watched_page


if TYPE_CHECKING:
    from playwright.sync_api import Browser


STUDIES = ("tiny/standard", "tiny/mars-pgm")
IGNORED = ("favicon",)
"""Console errors that say nothing about the storage: a missing favicon is one."""


def test_the_dashboard_lists_the_studies_and_labels_their_value_val_accuracy(
    browser: Browser, finished_search: FinishedSearch, tmp_path: Path
) -> None:
    log = tmp_path / "dashboard.log"
    with serving_dashboard(finished_search.url, log) as address, watched_page(browser) as watched:
        page = watched.page
        page.goto(f"{address}/dashboard")
        for name in STUDIES:
            page.get_by_text(name, exact=False).first.wait_for(timeout=20_000)
        page.get_by_text(STUDIES[1]).first.click()
        page.wait_for_url("**/dashboard/studies/*")
        page.get_by_text("val accuracy").first.wait_for(timeout=20_000)
        page.locator(".js-plotly-plot svg.main-svg").first.wait_for(timeout=20_000)
        assert "Objective 0" not in page.inner_text("body")
        assert watched.problems(ignore=IGNORED) == []
    assert "GET /api/studies" in log.read_text()
