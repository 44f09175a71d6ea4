"""The page under its security headers in a real browser: it works with its Content-Security-Policy (nothing the
browser blocks while a visitor loads, generates, restores history, clears it and opens the API page), and
another site cannot show it in a frame."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from .glm_page import DESKTOP, UI_TIMEOUT_MS, GlmPage

pytestmark = pytest.mark.browser

CSP_WORDS = ("Content Security Policy", "Content-Security-Policy")


@pytest.fixture
def watched(browser: Any) -> Iterator[tuple[Any, list[str]]]:
    """A fresh tab, and every console message the browser writes about its security policy (a blocked script,
    style, image or frame), collected from the first request on."""
    context = browser.new_context(locale="en-US", viewport=DESKTOP)
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    messages: list[str] = []
    page.on("console", lambda m: messages.append(m.text) if any(w in m.text for w in CSP_WORDS) else None)
    yield page, messages
    context.close()


def test_the_page_works_under_its_content_security_policy_without_a_single_violation(watched, server):
    page, violations = watched
    response = page.goto(server.url, wait_until="load")
    policy = response.headers["content-security-policy"]
    assert (
        "script-src 'self' 'nonce-" in policy and "'unsafe-inline'" not in policy.split("script-src")[1].split(";")[0]
    )
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    glm = GlmPage(page)
    glm.prompt.wait_for()
    page.locator("#model-status p").first.wait_for()

    glm.prepare("a red apple on a wooden table")
    assert glm.generate_and_wait() == (512, 512)
    glm.history_items.first.click()  # restore: an event off the queue
    expect(page.locator("#prompt textarea")).to_have_value("a red apple on a wooden table")
    page.locator("#clear-history").click()
    expect(page.get_by_test_id("toast-text")).to_contain_text("History cleared.")
    expect(glm.history_items).to_have_count(0)
    page.get_by_text("Use via API").click()
    expect(page.get_by_text("/generate").first).to_be_visible()
    glm.shot("security-csp-page-works")
    assert violations == []


@pytest.fixture
def framing_site(server: Any) -> Iterator[str]:
    """Another site on this machine (127.0.0.2, so another origin, and like the app on the loopback network,
    which Chromium lets frame it): a page that frames a page of its own (the control) and the app."""
    pages = {
        "/": f'<iframe id="own" src="/own"></iframe><iframe id="app" src="{server.url}"></iframe>',
        "/own": "<p id='own-text'>the framing site's own page</p>",
    }

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the standard library's name
            body = pages.get(self.path, "").encode()
            self.send_response(200 if body else 404)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            pass

    site = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Handler)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.2:{site.server_address[1]}/"
    site.shutdown()
    site.server_close()


def test_another_site_cannot_show_the_page_in_a_frame(watched, server, framing_site):
    page, messages = watched
    page.goto(framing_site, wait_until="load")
    expect(page.frame_locator("#own").locator("#own-text")).to_have_text("the framing site's own page")
    app_frame = page.locator("#app").element_handle().content_frame()
    page.wait_for_timeout(1_000)
    # The browser refused to show it (the frame holds Chromium's error page, not the app) and says why.
    assert app_frame.locator("#prompt").count() == 0
    assert any("frame-ancestors 'self'" in m for m in messages), messages
