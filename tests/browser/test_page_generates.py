"""A visitor opens the page, in English or in Chinese, writes a prompt and gets an image of the size they chose."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from .glm_page import SMALL_PRESET, UI_TIMEOUT_MS, preset_label, untranslated_text

pytestmark = pytest.mark.browser


def test_english_page_generates_a_styled_image_of_the_chosen_size_with_seed_timings_and_history(open_page):
    glm = open_page(locale="en-US")
    page = glm.page
    assert page.title() == "GLM Image"
    expect(page.get_by_label("Prompt", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="Generate")).to_be_visible()
    expect(page.locator("#model-status")).to_contain_text("Test model")  # the tiny model says it draws noise
    assert untranslated_text(glm) == []
    expect(page.locator("#examples")).to_contain_text("1344×768 · A lone astronaut")
    expect(glm.history_items).to_have_count(0)

    page.get_by_label("Prompt", exact=True).fill("a red apple on a wooden table")
    glm.choose("style", "Cinematic")
    glm.choose("size-preset", SMALL_PRESET)
    expect(page.locator("#width input")).to_have_value("512")
    expect(page.locator("#height input")).to_have_value("512")
    glm.set_steps(2)
    assert glm.generate_and_wait() == (512, 512)

    seed = page.locator("#seed-used input").input_value()
    assert seed.isdigit() and int(seed) > 0  # randomize was on, so the seed used is shown, not the 0 in the box
    expect(page.locator("#timings")).to_contain_text(f"Seed {seed}")
    expect(page.locator("#timings")).to_contain_text(re.compile(r"model [0-9.]+ s .*total [0-9.]+ s"))
    expect(glm.history_items).to_have_count(1)
    expect(page.locator("#history .caption-label")).to_have_text(f"#{seed} · a red apple on a wooden table")
    glm.shot("01-en-generate-512-cinematic")


def test_a_non_square_preset_fills_the_size_boxes_and_gives_an_image_of_that_size(open_page):
    glm = open_page(locale="en-US")
    glm.prompt.fill("a wide mountain valley at sunrise")
    glm.choose("size-preset", preset_label(1248, 832))
    expect(glm.locator("#width input")).to_have_value("1248")
    expect(glm.locator("#height input")).to_have_value("832")
    glm.set_steps(1)
    assert glm.generate_and_wait() == (1248, 832)
    assert glm.image_is_whole_in_result()
    glm.shot("01-en-generate-1248x832")


def test_chinese_page_shows_chinese_labels_and_messages_and_generates_from_a_chinese_prompt(open_page):
    glm = open_page(locale="zh-CN")
    page = glm.page
    expect(page.get_by_label("提示词", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="生成", exact=True)).to_be_visible()
    expect(page.get_by_label("风格")).to_have_value("无")
    expect(page.locator("#model-status")).to_contain_text("测试模型")
    assert untranslated_text(glm) == []
    assert page.get_by_role("button", name="Generate").count() == 0

    # Server-side messages follow the browser's language too.
    page.get_by_role("button", name="生成", exact=True).click()
    expect(glm.field_error("prompt")).to_have_text("请输入提示词：提示词为空。", timeout=UI_TIMEOUT_MS)

    # The message joins the box's accessible name now, so the label no longer matches exactly: use the id.
    glm.prompt.fill("一只在雪地里奔跑的红狐狸，远处是覆盖白雪的松树林")
    glm.choose("size-preset", SMALL_PRESET)
    glm.set_steps(1)
    assert glm.generate_and_wait(button="#generate") == (512, 512)
    expect(glm.field_error("prompt")).to_have_count(0)
    expect(page.locator("#timings")).to_contain_text("种子")
    expect(page.locator("#history .caption-label")).to_contain_text("一只在雪地里奔跑的红狐狸")
    glm.shot("02-zh-generate")
