"""What the browser tests share: Debian's Chromium driven by Playwright, one real small search
(digits, two methods, two trial slots) and optuna-dashboard serving its storage.

Without Chromium the tests are skipped, unless ``$CI`` is set: CI installs it (``.ci/run``)
and must not pass without having opened a page. ``docs/screenshots/make_screenshots.py``
uses the same helpers.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
from dataclasses import dataclass
import os
from pathlib import Path
import shutil
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING
from typing import Any
from typing import NoReturn
import urllib.error
import urllib.request

import pytest

from tests.conftest import ROOT
from tether.testing.specs import tiny_digits_spec
from tether.testing.specs import write_spec


if TYPE_CHECKING:
    from playwright.sync_api import Browser
    from playwright.sync_api import Page


VIEWPORT = {"width": 1280, "height": 900}


def chromium_executable() -> str | None:
    """Debian's Chromium (``apt-get install chromium``), or None where it is missing."""
    return shutil.which("chromium") or (
        "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None
    )


def skip_or_fail(reason: str) -> NoReturn:
    """Skip a browser test for ``reason``; under ``$CI``, fail it instead."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run the browser tests")
    pytest.skip(reason)


@contextlib.contextmanager
def launched_chromium() -> Iterator[Browser]:
    """Headless Chromium, driven by Playwright.

    Raises:
        RuntimeError: Chromium or Playwright is missing.
    """
    executable = chromium_executable()
    if executable is None:
        raise RuntimeError("Chromium is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise RuntimeError("Playwright is not installed (pip install playwright)") from None
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox"], headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    try:
        with launched_chromium() as launched:
            yield launched
    except RuntimeError as missing:
        skip_or_fail(str(missing))


@dataclass
class WatchedPage:
    """A page and what went wrong on it: console errors and uncaught exceptions."""

    page: Page
    errors: list[str]

    def problems(self, *, ignore: tuple[str, ...] = ()) -> list[str]:
        """The errors, those containing one of ``ignore`` left out."""
        return [e for e in self.errors if not any(part in e for part in ignore)]


@contextlib.contextmanager
def watched_page(browser: Browser) -> Iterator[WatchedPage]:
    """A fresh page (own context, 1280 x 900) that records its console errors."""
    context = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    page = context.new_page()
    watched = WatchedPage(page, [])

    def console(message: Any) -> None:
        if message.type == "error":
            watched.errors.append(f"console error: {message.text} ({message.location})")

    page.on("console", console)
    page.on("pageerror", lambda error: watched.errors.append(f"page error: {error}"))
    try:
        yield watched
    finally:
        context.close()


@dataclass(frozen=True)
class FinishedSearch:
    """A search ``tether run`` finished: its spec file, storage URL and report."""

    spec: Path
    url: str
    report: Path


def run_search(work: Path, cache_dir: Path, spec: dict[str, Any]) -> FinishedSearch:
    """``tether run`` of ``spec`` in ``work`` (SQLite storage, two trial slots on the CPU),
    its report written to ``<name>-report.html``.

    Raises:
        RuntimeError: the run failed (its stderr in the message).
    """
    path = write_spec(work, spec)
    url = f"sqlite:///{work / spec['name']}.db"
    report = work / f"{spec['name']}-report.html"
    command = ["run", str(path), "--storage", url, "--devices", "cpu", "--trials-per-device", "2"]
    done = subprocess.run(
        [sys.executable, "-m", "tether", *command, "--report", str(report)],
        capture_output=True,
        text=True,
        cwd=work,
        env={**os.environ, "TETHER_CACHE_DIR": str(cache_dir)},
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"tether run failed ({done.returncode}):\n{done.stderr}")
    return FinishedSearch(path, url, report)


def small_spec(name: str = "tiny") -> dict[str, Any]:
    """Standard fine-tuning and MARS-PGM on clean digits: three trials of two epochs, two
    evaluation seeds (an interval and a paired difference), seconds on a CPU."""
    return tiny_digits_spec(
        name,
        recipe=str(ROOT / "configs" / "digits.yaml"),
        set={"train.epochs": 2},
        budget={"n_trials": 3},
        evaluation={"n_seeds": 2},
    )


@pytest.fixture(scope="session")
def finished_search(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> FinishedSearch:
    """One real small search, shared by the report and the dashboard tests."""
    return run_search(tmp_path_factory.mktemp("browser"), cache_dir, small_spec())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def serving_dashboard(url: str, log: Path, *, timeout: float = 30.0) -> Iterator[str]:
    """``tether dashboard`` serving the storage ``url`` on a free port of 127.0.0.1, its
    requests logged to ``log``; yields its address, stopped (SIGTERM) on exit.

    Raises:
        RuntimeError: it exited, or did not answer within ``timeout`` seconds.
    """
    port = free_port()
    address = f"http://127.0.0.1:{port}"
    with log.open("w") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "tether", "dashboard", "--storage", url, "--port", str(port)],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_for(f"{address}/api/studies", server, log, timeout=timeout)
            yield address
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def _wait_for(address: str, server: subprocess.Popen[bytes], log: Path, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(
                f"tether dashboard exited ({server.returncode}):\n{log.read_text()}"
            )
        try:
            with urllib.request.urlopen(address, timeout=2):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise RuntimeError(f"tether dashboard did not answer in {timeout:.0f}s:\n{log.read_text()}")
