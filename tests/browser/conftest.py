"""The page in a real browser: one headless Chromium for the whole run, pages on the shared tiny-model server.

Debian's ``/usr/bin/chromium`` drives the tests (``tests/run.sh`` installs it with a CJK font); Playwright's own
browser download is never used. Every scenario saves what a person would see to ``artifacts/screenshots/``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import sync_playwright

from .glm_page import DESKTOP, SCREENSHOTS, UI_TIMEOUT_MS, GlmPage

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing, so the page cannot be tested in a browser. Install Debian's browser and "
            "a Chinese font: `apt-get install -y chromium fonts-wqy-microhei` (tests/run.sh does this). "
            "Do not run `playwright install`.",
            pytrace=False,
        )
    for stale in SCREENSHOTS.glob("FAILED-*.png"):  # from an earlier run; this run's failures write their own
        stale.unlink()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def open_page(browser: Any, server: Any, request: pytest.FixtureRequest) -> Iterator[Callable[..., GlmPage]]:
    """Open the page in a fresh browser context (its own cookies, so its own Gradio session). Waits for the
    "load" event and the prompt box, never for "networkidle": the session heartbeat keeps a request open."""
    contexts: list[Any] = []
    pages: list[GlmPage] = []

    def open_(locale: str = "en-US", viewport: dict[str, int] | None = None) -> GlmPage:
        context = browser.new_context(locale=locale, viewport=viewport or DESKTOP)
        context.set_default_timeout(UI_TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        page.goto(server.url, wait_until="load")
        page.locator("#prompt textarea").wait_for()
        page.locator("#model-status p").first.wait_for()
        glm = GlmPage(page)
        pages.append(glm)
        return glm

    yield open_
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        for number, glm in enumerate(pages):
            glm.shot(f"FAILED-{request.node.name}-{number}")
    for context in contexts:
        context.close()
