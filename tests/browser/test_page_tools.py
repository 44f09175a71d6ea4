"""What people who use image tools every day expect, in the real page: read a picture's parameters and use them,
download the whole session as one zip, variations with their seeds, Stop only while a job runs, Ctrl+Enter, and
the tab's title, progress and icon."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import request_kwargs
from PIL import Image, PngImagePlugin
from playwright.sync_api import expect

from glmimage.sizes import ASSETS_DIR

from .glm_page import GENERATION_TIMEOUT_MS, UI_TIMEOUT_MS, GlmPage

pytestmark = pytest.mark.browser


def set_images(glm: GlmPage, count: int) -> None:
    box = glm.locator("#num-images input[type='number']")
    box.fill(str(count))
    box.press("Enter")
    expect(glm.locator("#num-images input[type='range']")).to_have_value(str(count))


def open_read_parameters(glm: GlmPage) -> None:
    glm.locator("#read-parameters .label-wrap").first.click()
    expect(glm.locator("#read-file input[type='file']")).to_have_count(1)


def copies_of(data: bytes) -> int:
    """How many files under Gradio's temporary folder hold exactly these bytes."""
    digest = hashlib.sha256(data).hexdigest()
    root = Path(os.environ["GRADIO_TEMP_DIR"])
    return sum(1 for p in root.rglob("*") if p.is_file() and hashlib.sha256(p.read_bytes()).hexdigest() == digest)


def shown_pixels(glm: GlmPage) -> np.ndarray:
    src = glm.result_src()
    return np.asarray(Image.open(io.BytesIO(glm.page.request.get(src).body())).convert("RGB"))


def test_a_dropped_picture_shows_its_settings_and_using_them_redraws_the_same_pixels(open_page, server):
    asked = request_kwargs(prompt="drop-canary a paper crane on a desk", style="anime", seed=13579)
    images, _, _ = server.client().predict(**{**asked, "num_inference_steps": 1}, api_name="/generate")
    original = Path(images[0]["image"])
    copies_before = copies_of(original.read_bytes())
    glm = open_page(locale="en-US")
    open_read_parameters(glm)

    glm.locator("#read-file input[type='file']").set_input_files(str(original))

    summary = glm.locator("#read-summary")
    expect(summary).to_contain_text("Prompt: drop-canary a paper crane on a desk")
    expect(summary).to_contain_text("Style: Anime")
    expect(summary).to_contain_text("Seed 13579 · Size 512×512 · Steps 1 · Guidance 3.5 · Model tiny")
    expect(glm.locator("#read-file")).to_contain_text("Drop File Here")  # empty again for the next picture
    assert copies_of(original.read_bytes()) == copies_before  # the dropped file was deleted once read
    glm.shot("08-en-read-parameters")

    glm.locator("#use-parameters").click()
    expect(glm.prompt).to_have_value("drop-canary a paper crane on a desk")
    expect(glm.locator("#style input")).to_have_value("Anime")
    expect(glm.locator("#size-preset input")).to_have_value("1:1 · 512×512")
    glm.locator("#advanced .label-wrap").first.click()
    expect(glm.locator("#seed input")).to_have_value("13579")
    expect(glm.locator("#randomize-seed input")).not_to_be_checked()
    expect(glm.locator("#steps input[type='number']")).to_have_value("1")
    expect(glm.locator("#num-images input[type='number']")).to_have_value("1")

    assert glm.generate_and_wait() == (512, 512)
    assert np.array_equal(shown_pixels(glm), np.asarray(Image.open(original).convert("RGB")))
    glm.shot("08-en-read-parameters-redrawn")


def test_a_file_pasted_on_the_page_is_read_like_a_dropped_one(open_page, tmp_path):
    picture = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "一座雪山\nSteps: 12, CFG scale: 4, Seed: 777, Size: 768x1344, Model: glm")
    Image.new("RGB", (8, 8), "white").save(picture, format="PNG", pnginfo=info)
    glm = open_page(locale="zh-CN")

    # The section is closed: pasting opens it and reads the file.
    glm.page.evaluate(
        """(data) => {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "pasted.png", {type: "image/png"}));
            document.body.dispatchEvent(new ClipboardEvent("paste", {clipboardData: transfer, bubbles: true}));
        }""",
        base64.b64encode(picture.getvalue()).decode(),
    )
    expect(glm.locator("#read-summary")).to_contain_text("提示词: 一座雪山")
    expect(glm.locator("#read-summary")).to_contain_text("随机种子 777 · 尺寸 768×1344")

    # Text pasted into the prompt stays text.
    glm.prompt.focus()
    glm.page.evaluate(
        """() => {
            const transfer = new DataTransfer();
            transfer.setData("text/plain", "typed");
            document.querySelector("#prompt textarea")
                .dispatchEvent(new ClipboardEvent("paste", {clipboardData: transfer, bubbles: true}));
        }"""
    )
    expect(glm.locator("#read-summary")).to_contain_text("一座雪山")
    glm.shot("09-zh-read-parameters-pasted")


def test_a_file_that_is_not_a_picture_is_refused_in_the_visitors_language(open_page, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture", encoding="utf-8")
    glm = open_page(locale="zh-CN")
    open_read_parameters(glm)
    glm.locator("#read-file input[type='file']").set_input_files(str(notes))
    expect(glm.page.get_by_test_id("toast-text").filter(has_text="该文件不是 PNG 图片")).to_be_visible()
    expect(glm.locator("#read-summary")).to_have_text("尚未读取图片。")
    expect(glm.locator("#use-parameters")).to_be_disabled()
    assert copies_of(notes.read_bytes()) == 0


def test_download_all_gives_one_zip_with_every_png_of_the_session(open_page, tmp_path):
    glm = open_page(locale="en-US")
    glm.prepare("download-canary a stack of books")
    set_images(glm, 2)
    glm.generate_and_wait()
    set_images(glm, 1)
    glm.generate_and_wait()

    with glm.page.expect_download(timeout=UI_TIMEOUT_MS) as download:
        glm.locator("#download-all").click()  # one press
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)

    assert re.fullmatch(r"glm-image-\d{8}-\d{6}\.zip", saved.name)
    with zipfile.ZipFile(saved) as archive:
        names = archive.namelist()
        texts = [Image.open(io.BytesIO(archive.read(name))).info.get("parameters") for name in names]
    assert len(names) == 3 and all(name.endswith(".png") for name in names)
    assert all(text and text.startswith("download-canary a stack of books") for text in texts)
    glm.shot("10-en-download-all")


def test_variations_show_a_different_seed_under_each_image_and_join_the_history(open_page):
    glm = open_page(locale="en-US")
    glm.prepare("variation-canary a lantern in the rain")
    set_images(glm, 3)

    glm.locator("#variations").click()

    expect(glm.history_items).to_have_count(3, timeout=GENERATION_TIMEOUT_MS)
    captions = glm.locator("#result .caption-label")
    expect(captions).to_have_count(3)
    seeds = [int(text.removeprefix("Seed ")) for text in captions.all_inner_texts()]
    assert len(set(seeds)) == 3
    history_seeds = [
        int(c.split(" · ")[0].lstrip("#")) for c in glm.locator("#history .caption-label").all_inner_texts()
    ]
    assert sorted(history_seeds) == sorted(seeds)
    expect(glm.locator("#timings")).to_contain_text("Variations 3 · seeds " + ", ".join(map(str, seeds)))
    glm.shot("11-en-variations")


def test_stop_is_enabled_only_while_a_job_runs_and_the_tab_title_counts_its_steps(open_page, server):
    glm = open_page(locale="en-US")
    page = glm.page
    expect(page).to_have_title("GLM Image")
    assert page.request.get(server.url + "favicon.ico").body() == (ASSETS_DIR / "favicon.png").read_bytes()
    stop = glm.locator("#stop")
    expect(stop).to_be_disabled()

    glm.prepare("ctrl-enter-canary a windmill", steps=40)
    glm.prompt.press("Enter")  # Enter is a new line, as before
    expect(glm.prompt).to_have_value("ctrl-enter-canary a windmill\n")
    expect(stop).to_be_disabled()
    glm.prompt.fill("ctrl-enter-canary a windmill")

    glm.prompt.press("Control+Enter")

    expect(page).to_have_title(re.compile(r"^step \d+/40 · GLM Image$"), timeout=GENERATION_TIMEOUT_MS)
    expect(stop).to_be_enabled()
    glm.shot("12-en-running-stop-enabled")
    expect(glm.history_items).to_have_count(1, timeout=GENERATION_TIMEOUT_MS)
    expect(page).to_have_title("GLM Image")
    expect(stop).to_be_disabled()
    expect(glm.prompt).to_have_value("ctrl-enter-canary a windmill")  # no new line from Ctrl+Enter
    glm.shot("12-en-done-stop-disabled")
