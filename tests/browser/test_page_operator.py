"""What an operator shows visitors, seen in the browser in English and Chinese: the maintenance banner (appearing
and going with the file, no reload) and its refusal of Generate, and the support line at the foot of the page and
in the privacy notice."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from .glm_page import DESKTOP, SMALL_PRESET, UI_TIMEOUT_MS, GlmPage

pytestmark = pytest.mark.browser

CONTACT = "[help@example.org](mailto:help@example.org)"
NOTICE = "[en]\nUpgrading the GPU, back at 22:00.\n[zh]\n正在升级 GPU，22:00 恢复。\n"
# The page looks every 5 s and the server reads the file at most every 2 s.
BANNER_TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def maintenance_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("operator") / "maintenance"
    yield path
    path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def server(start_server, maintenance_file):
    """This module's pages open on a server with a maintenance file and a support line (open_page uses it)."""
    return start_server(maintenance_file=str(maintenance_file), contact=CONTACT)


@pytest.fixture
def maintenance(maintenance_file):
    maintenance_file.write_text(NOTICE, encoding="utf-8")
    yield maintenance_file
    maintenance_file.unlink(missing_ok=True)


def test_english_page_shows_the_support_line_and_the_maintenance_banner_that_refuses_generate(open_page, maintenance):
    glm = open_page(locale="en-US")
    page = glm.page
    contact = page.locator("#contact")
    expect(contact).to_contain_text("Questions or problems? Contact: help@example.org")
    expect(contact.get_by_role("link", name="help@example.org")).to_have_attribute("href", "mailto:help@example.org")
    page.locator("#privacy-section .label-wrap").first.click()
    expect(page.locator("#privacy-notice")).to_contain_text("Questions about your data: help@example.org")

    banner = page.locator("#maintenance-banner")
    expect(banner).to_have_text("Upgrading the GPU, back at 22:00.", timeout=BANNER_TIMEOUT_MS)
    glm.prompt.fill("a red apple on a wooden table")
    glm.choose("size-preset", SMALL_PRESET)
    page.locator("#generate").click()
    expect(glm.field_error("prompt")).to_contain_text("Paused for maintenance: Upgrading the GPU, back at 22:00.")
    glm.shot("13-en-maintenance-banner-and-contact")

    maintenance.unlink()  # maintenance over: the banner goes without a reload
    expect(banner).to_be_hidden(timeout=BANNER_TIMEOUT_MS)


def test_chinese_page_shows_the_support_line_and_the_maintenance_banner_in_chinese(open_page, maintenance):
    glm = open_page(locale="zh-CN")
    page = glm.page
    expect(page.locator("#contact")).to_contain_text("问题或反馈？请联系：help@example.org")
    page.locator("#privacy-section .label-wrap").first.click()
    expect(page.locator("#privacy-notice")).to_contain_text("关于你的数据的问题：help@example.org")
    expect(page.locator("#maintenance-banner")).to_have_text("正在升级 GPU，22:00 恢复。", timeout=BANNER_TIMEOUT_MS)
    glm.prompt.fill("一只橘猫")
    glm.choose("size-preset", SMALL_PRESET)
    page.locator("#generate").click()
    expect(glm.field_error("prompt")).to_contain_text("维护暂停：正在升级 GPU，22:00 恢复。")
    glm.shot("13-zh-maintenance-banner-and-contact")


def test_without_maintenance_there_is_no_banner_and_the_page_generates(open_page, maintenance_file):
    assert not maintenance_file.exists()
    glm = open_page(locale="en-US")
    expect(glm.page.locator("#contact")).to_be_visible()
    glm.prepare("a lighthouse at dusk")
    assert glm.generate_and_wait() == (512, 512)
    expect(glm.page.locator("#maintenance-banner")).to_be_hidden()


# htpasswd -nbB -C 5 alice 'correct horse 电池'
HTPASSWD = "alice:$2y$05$vZZWz/LxLGPW1rco5HNO0OsRK7cDt0dHbDWDW7R1NgmwwgCyes.kS\n"


def test_with_an_auth_file_the_page_asks_for_a_login_and_then_works(browser, start_server, tmp_path):
    path = tmp_path / "htpasswd"
    path.write_text(HTPASSWD, encoding="utf-8")
    private = start_server(auth_file=str(path))
    context = browser.new_context(locale="en-US", viewport=DESKTOP)
    context.set_default_timeout(UI_TIMEOUT_MS)
    try:
        page = context.new_page()
        page.goto(private.url, wait_until="load")
        expect(page.locator("#prompt")).to_have_count(0)  # nothing of the app before the login
        page.get_by_label("username").fill("alice")
        page.get_by_label("password").fill("not the password")
        page.get_by_role("button", name="Login").click()
        expect(page.get_by_text("Incorrect Credentials")).to_be_visible()
        page.get_by_label("username").fill("alice")  # Gradio's form empties itself after a failure
        page.get_by_label("password").fill("correct horse 电池")
        page.get_by_role("button", name="Login").click()
        glm = GlmPage(page)
        glm.prompt.wait_for()
        page.locator("#privacy-section .label-wrap").first.click()
        expect(page.locator("#privacy-notice")).to_contain_text("This server asks for a login")
        glm.prepare("a lighthouse at dusk")
        assert glm.generate_and_wait() == (512, 512)
        glm.shot("13-en-after-login")
    finally:
        context.close()
