"""The report of a real small search, opened in headless Chromium as a reader opens it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.browser.conftest import VIEWPORT
from tests.browser.conftest import FinishedSearch
from tests.browser.conftest import watched_page


if TYPE_CHECKING:
    from playwright.sync_api import Browser


FIGURES = [
    "comparison",
    "difference",
    "cost",
    "history",
    "curves",
    "timeline",
    "edf",
    "params",
    "distances",
]
"""The figures of one search with a baseline, in page order (no importance: three trials)."""

RENDERED = """() => [...document.querySelectorAll("figure.plot")].every(
    figure => figure.querySelector(".js-plotly-plot svg.main-svg"))"""

TABLE_FIRST = """() => {
    const table = document.querySelector("main table");
    const plot = document.querySelector(".js-plotly-plot");
    return table !== null && table.closest("section") === document.querySelector("main section")
        && Boolean(table.compareDocumentPosition(plot) & Node.DOCUMENT_POSITION_FOLLOWING);
}"""


def test_every_figure_of_the_report_renders_in_chromium_without_an_error(
    browser: Browser, finished_search: FinishedSearch
) -> None:
    with watched_page(browser) as watched:
        page = watched.page
        page.goto(finished_search.report.as_uri())
        page.wait_for_function(RENDERED, timeout=20_000)
        names = page.eval_on_selector_all("figure.plot", "all => all.map(f => f.dataset.figure)")
        assert names == FIGURES
        plots = page.locator(".js-plotly-plot")
        assert plots.count() == len(FIGURES)
        for i in range(len(FIGURES)):
            assert plots.nth(i).locator("svg.main-svg").count() >= 1, FIGURES[i]
            assert plots.nth(i).locator("g.trace").count() >= 1, f"{FIGURES[i]} drew nothing"
        assert watched.problems() == []


def test_the_comparison_table_comes_first_and_is_in_view_on_opening(
    browser: Browser, finished_search: FinishedSearch
) -> None:
    with watched_page(browser) as watched:
        page = watched.page
        page.goto(finished_search.report.as_uri())
        assert page.evaluate(TABLE_FIRST)
        table = page.locator("main table").first
        methods = table.locator("tbody tr td:first-child").all_inner_texts()
        assert [m.strip() for m in methods] == ["standard", "mars-pgm"]
        assert "test % mean +- std [95% CI]" in table.locator("thead").inner_text()
        box = table.bounding_box()
        assert box is not None
        assert box["y"] + box["height"] < VIEWPORT["height"]  # in view without scrolling
        assert watched.problems() == []
