"""Regenerate report.png and dashboard.png in this folder from a real small search.

    .venv/bin/python docs/screenshots/make_screenshots.py

Runs a digits search on the CPU in a temporary folder (standard fine-tuning, MARS-PGM and
L2-SP at 20 and 40 % label noise, eight trials each with the median pruner, three
evaluation seeds: a few minutes), then opens its report and optuna-dashboard serving its
storage in headless Chromium (Debian's ``chromium``) and photographs both. Fails, writing
nothing, if a page logs a console error.
"""

from __future__ import annotations

from pathlib import Path
import sys
import tempfile


ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from tests.browser.conftest import launched_chromium  # noqa: E402
from tests.browser.conftest import run_search  # noqa: E402
from tests.browser.conftest import serving_dashboard  # noqa: E402
from tests.browser.conftest import watched_page  # noqa: E402
from tether.testing.specs import tiny_digits_spec  # noqa: E402


REPORT_HEIGHT = 2600
"""Pixels of the report photographed from its top: the table, the setup and the comparison."""

DASHBOARD_STUDY = "docs.n40/mars-pgm"


def docs_spec() -> dict[str, object]:
    """Three methods at two noise rates: enough trials for curves, pruning and facets."""
    return tiny_digits_spec(
        "docs",
        recipe=str(ROOT / "configs" / "digits.yaml"),
        methods={
            "standard": {},
            "mars-pgm": {
                "relative": True,
                "radius": {"low": 0.02, "high": 1.0},
                "head_radius": {"low": 0.5, "high": 10.0},
                "enqueue": [{"radius": 0.1, "head_radius": 3.0}],
            },
            "l2-sp": {"alpha": {"low": 1e-4, "high": 1.0}, "beta": {"low": 1e-4, "high": 1.0}},
        },
        set={"train.epochs": 8, "data.shots": 10, "data.val_shots": 5},
        conditions={
            "n20": {"set": {"data.noise": "symmetric", "data.noise_rate": 0.2}},
            "n40": {"set": {"data.noise": "symmetric", "data.noise_rate": 0.4}},
        },
        budget={"n_trials": 8},
        sampler={"name": "tpe", "seed": 0},
        pruner={"name": "median", "n_startup_trials": 3, "n_warmup_steps": 2},
        evaluation={"n_seeds": 3},
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        search = run_search(work, work / "cache", docs_spec())
        with launched_chromium() as browser:
            with watched_page(browser) as watched:
                page = watched.page
                page.goto(search.report.as_uri())
                page.wait_for_selector("figure.plot .js-plotly-plot svg.main-svg")
                page.wait_for_timeout(500)
                shot = page.screenshot(
                    clip={"x": 0, "y": 0, "width": 1280, "height": REPORT_HEIGHT},
                    full_page=True,
                )
                if watched.problems():
                    raise SystemExit(f"the report logged errors: {watched.problems()}")
            with (
                serving_dashboard(search.url, work / "dashboard.log") as address,
                watched_page(browser) as watched,
            ):
                page = watched.page
                page.goto(f"{address}/dashboard")
                page.get_by_text(DASHBOARD_STUDY).first.click()
                page.get_by_text("val accuracy").first.wait_for(timeout=30_000)
                page.mouse.move(600, 100)  # off the plots: no toolbar, no hover label
                page.wait_for_timeout(1500)  # the plots fade in
                board = page.screenshot()
                if watched.problems(ignore=("favicon",)):
                    raise SystemExit(f"the dashboard logged errors: {watched.problems()}")
    (HERE / "report.png").write_bytes(shot)
    (HERE / "dashboard.png").write_bytes(board)
    print(f"wrote {HERE / 'report.png'} and {HERE / 'dashboard.png'}")


if __name__ == "__main__":
    main()
