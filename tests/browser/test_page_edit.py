"""GLM-Image's Edit mode in a real browser (``--model tiny-glm``), in English and Chinese: the mode is there, a picture
dropped in its box is taken in (and sets the output size), pasting adds another, Edit shows the result beside the
picture (before/after), and the history says the entry is an edit."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from .glm_page import DESKTOP, GENERATION_TIMEOUT_MS, SMALL_PRESET, UI_TIMEOUT_MS, GlmPage

pytestmark = pytest.mark.browser

WORDS = {
    "en-US": {
        "create": "Create from text",
        "edit": "Edit pictures",
        "button": "Edit",
        "caption": "edit of 1 picture(s)",
        "slider": "Before / after",
    },
    "zh-CN": {
        "create": "文字生成",
        "edit": "编辑图片",
        "button": "编辑",
        "caption": "编辑 1 张图片",
        "slider": "修改前 / 修改后",
    },
}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    import torch  # GLM-Image's many tiny planning steps: see tests/test_edit_server.py

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def glm_server(start_server: Callable[..., Any]) -> Any:
    return start_server(model="tiny-glm")


@pytest.fixture
def open_glm(browser: Any, glm_server: Any) -> Iterator[Callable[[str], GlmPage]]:
    contexts: list[Any] = []

    def open_(locale: str) -> GlmPage:
        context = browser.new_context(locale=locale, viewport=DESKTOP)
        context.set_default_timeout(UI_TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        page.goto(glm_server.url, wait_until="load")
        page.locator("#prompt textarea").wait_for()
        page.locator("#model-status p").first.wait_for()
        return GlmPage(page)

    yield open_
    for context in contexts:
        context.close()


def two_colour_png(width: int, height: int, left: tuple[int, int, int], right: tuple[int, int, int]) -> bytes:
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2], pixels[:, width // 2 :] = left, right
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def paste_picture(glm: GlmPage, data: bytes) -> None:
    """What Ctrl+V with a copied picture does: a paste event whose clipboard holds one PNG file."""
    glm.page.evaluate(
        """encoded => {
            const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "pasted.png", {type: "image/png"}));
            document.body.dispatchEvent(new ClipboardEvent("paste", {clipboardData: transfer, bubbles: true}));
        }""",
        base64.b64encode(data).decode(),
    )


@pytest.mark.parametrize("locale", ["en-US", "zh-CN"])
def test_the_edit_mode_takes_a_picture_and_shows_the_result_beside_it(open_glm, tmp_path, locale):
    words = WORDS[locale]
    glm = open_glm(locale)
    page = glm.page
    expect(page.get_by_role("tab", name=words["create"])).to_be_visible()
    page.get_by_role("tab", name=words["edit"]).click()
    expect(page.locator("#edit-run")).to_have_text(words["button"])

    picture = tmp_path / "photo.png"
    picture.write_bytes(two_colour_png(128, 96, (220, 40, 40), (40, 80, 220)))
    page.locator("#edit-pictures input[type='file']").set_input_files(str(picture))
    # The box shows the clean copy (in the session's folder), and the output size follows the picture: 4:3.
    expect(page.locator("#edit-pictures img[src*='/glmimage/']")).to_have_count(1)
    expect(page.locator("#width input")).to_have_value("672")
    expect(page.locator("#height input")).to_have_value("512")

    glm.choose("size-preset", SMALL_PRESET)
    glm.set_steps(2)
    page.locator("#edit-prompt textarea").fill("make it a snowy evening")
    page.locator("#edit-run").click()
    slider = page.locator("#before-after")
    expect(slider).to_be_visible(timeout=GENERATION_TIMEOUT_MS)
    expect(slider.get_by_text(words["slider"])).to_be_visible()
    page.wait_for_function(
        """() => { const images = [...document.querySelectorAll('#before-after img')];
                   return images.length === 2 && images.every((img) => img.complete && img.naturalWidth > 0); }""",
        timeout=UI_TIMEOUT_MS,
    )
    assert glm.image_size() == (512, 512)
    expect(glm.history_items).to_have_count(1)
    expect(page.locator("#history")).to_contain_text(words["caption"])
    glm.shot(f"edit-before-after-{locale}")

    # A copied picture pasted on the page joins the first in the box.
    paste_picture(glm, two_colour_png(64, 64, (30, 160, 60), (250, 220, 30)))
    expect(page.locator("#edit-pictures img[src*='/glmimage/']")).to_have_count(2)
    expect(page.locator("#width input")).to_have_value("512")  # the size the visitor chose stays
    glm.shot(f"edit-two-pictures-{locale}")
