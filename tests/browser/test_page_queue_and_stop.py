"""Two visitors at once on a server that runs one generation at a time, and a visitor stopping a long one.

A "long" generation is 100 steps at 1024×1024 (well over 20 s on the tiny model on a CPU); each test stops it with
the Stop button once it has started, so the tests never wait for it to end.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from .glm_page import GENERATION_TIMEOUT_MS, UI_TIMEOUT_MS, preset_label

pytestmark = pytest.mark.browser

RUNNING = re.compile(r"\d+/100 steps")


def start_long_generation(glm, prompt: str) -> None:
    glm.prepare(prompt, preset=preset_label(1024, 1024), steps=100)
    glm.locator("#generate").click()
    expect(glm.progress).to_contain_text(RUNNING, timeout=GENERATION_TIMEOUT_MS)


def test_two_visitors_see_only_their_own_history_and_the_second_sees_its_queue_position(open_page, server):
    assert server.settings.concurrency == 1
    first, second = open_page(locale="en-US"), open_page(locale="en-US")
    first.prepare("first visitor: a green door")
    first.generate_and_wait()

    start_long_generation(first, "first visitor: a long one")
    second.prepare("second visitor: a blue kite")
    second.locator("#generate").click()
    expect(second.progress).to_contain_text("queue: 1/1", timeout=UI_TIMEOUT_MS)
    expect(first.progress).to_contain_text(RUNNING)  # still running: the second one really waits behind it
    second.shot("05-en-second-visitor-queued")
    first.shot("05-en-first-visitor-running")

    first.locator("#stop").click()
    expect(second.history_items).to_have_count(1, timeout=GENERATION_TIMEOUT_MS)
    assert second.image_size() == (512, 512)
    expect(first.history_items).to_have_count(1)
    first_captions = first.locator("#history .caption-label").all_inner_texts()
    second_captions = second.locator("#history .caption-label").all_inner_texts()
    assert [c.split(" · ", 1)[1] for c in first_captions] == ["first visitor: a green door"]
    assert [c.split(" · ", 1)[1] for c in second_captions] == ["second visitor: a blue kite"]
    second.shot("05-en-second-visitor-done")


def test_stop_ends_a_long_generation_without_a_history_entry_and_the_page_works_again(open_page):
    glm = open_page(locale="en-US")
    start_long_generation(glm, "a generation that will be stopped")
    glm.shot("06-en-long-generation-running")

    glm.page.get_by_role("button", name="Stop").click()
    toast = glm.page.get_by_test_id("toast-text").filter(has_text=re.compile(r"Stopped at step \d+ of 100"))
    expect(toast).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(toast).to_contain_text("Your history is unchanged.")
    expect(glm.progress).not_to_contain_text(RUNNING)
    expect(glm.history_items).to_have_count(0)
    expect(glm.locator("#result img")).to_have_count(0)
    glm.shot("06-en-stopped")

    glm.prepare("a generation after the stop")
    assert glm.generate_and_wait() == (512, 512)
    captions = glm.locator("#history .caption-label").all_inner_texts()
    assert [c.split(" · ", 1)[1] for c in captions] == ["a generation after the stop"]
    glm.shot("06-en-generation-after-stop")
