"""What the browser scenarios do to the page: one visitor's tab (:class:`GlmPage`) and the checks they share."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from playwright.sync_api import expect

from glmimage.sizes import load_size_presets

SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
DESKTOP = {"width": 1280, "height": 900}
# Generous: the tiny model shares two CPU cores with the browser and the rest of the test run.
UI_TIMEOUT_MS = 20_000
GENERATION_TIMEOUT_MS = 90_000


def preset_label(width: int, height: int) -> str:
    """The Size dropdown's text for a preset, read from assets/sizes.json as the page does."""
    return next(p.label for p in load_size_presets() if (p.width, p.height) == (width, height))


SMALL_PRESET = preset_label(512, 512)


class GlmPage:
    """One visitor's tab, with the few actions the scenarios repeat. Locators use the page's element ids, so the
    same actions work in every language; the tests assert the visible words themselves."""

    def __init__(self, page: Any) -> None:
        self.page = page

    def locator(self, selector: str) -> Any:
        return self.page.locator(selector)

    @property
    def prompt(self) -> Any:
        return self.page.locator("#prompt textarea")

    @property
    def history_items(self) -> Any:
        return self.page.locator("#history button.thumbnail-item")

    @property
    def result_image(self) -> Any:
        return self.page.locator("#result img").first

    @property
    def progress(self) -> Any:
        """The status text over the result: "queue: 1/1 | 0.4s", "3/100 steps | 2.1s"."""
        return self.page.locator("#result [data-testid='status-tracker']")

    def field_error(self, elem_id: str) -> Any:
        """The message Gradio's validator shows above an input (``gr.validate``), e.g. under the Width label."""
        return self.page.locator(f"#{elem_id} div.validation-error")

    def choose(self, dropdown_id: str, option: str) -> None:
        self.page.locator(f"#{dropdown_id} input").click()
        self.page.get_by_role("option", name=option, exact=True).click()
        expect(self.page.locator(f"#{dropdown_id} input")).to_have_value(option)

    def fill_number(self, elem_id: str, value: int) -> None:
        box = self.page.locator(f"#{elem_id} input[type='number']")
        box.fill(str(value))
        box.press("Tab")

    def set_steps(self, steps: int) -> None:
        """Steps live in the closed Advanced accordion: open it, then type into the slider's number box."""
        box = self.page.locator("#steps input[type='number']")
        slider = self.page.locator("#steps input[type='range']")
        if not box.is_visible():
            self.page.locator("#advanced .label-wrap").first.click()
        expect(slider).to_be_visible()
        # Typed again if the slider, drawn as the accordion opens, put its default back over the first typing;
        # the range input moving shows the component itself took the value.
        for _ in range(3):
            box.fill(str(steps))
            box.press("Enter")
            try:
                expect(slider).to_have_value(str(steps), timeout=2_000)
                break
            except AssertionError:
                continue
        expect(slider).to_have_value(str(steps))
        expect(box).to_have_value(str(steps))

    def prepare(self, prompt: str, preset: str = SMALL_PRESET, steps: int = 1) -> None:
        self.prompt.fill(prompt)
        self.choose("size-preset", preset)
        self.set_steps(steps)

    def result_src(self) -> str | None:
        return self.result_image.get_attribute("src") if self.page.locator("#result img").count() else None

    def generate_and_wait(self, button: str = "#generate") -> tuple[int, int]:
        """Press Generate and wait until a new image has loaded and the history has gained its entry; returns the
        image's real pixel size."""
        before_src, before_history = self.result_src(), self.history_items.count()
        self.page.locator(button).click()
        self.page.wait_for_function(
            """previous => { const img = document.querySelector('#result img');
                             return img && img.complete && img.naturalWidth > 0 && img.src !== previous; }""",
            arg=before_src,
            timeout=GENERATION_TIMEOUT_MS,
        )
        expect(self.history_items).to_have_count(before_history + 1, timeout=UI_TIMEOUT_MS)
        return self.image_size()

    def image_size(self) -> tuple[int, int]:
        width, height = self.result_image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
        return width, height

    def image_is_whole_in_result(self) -> bool:
        """True when the shown image's box lies inside the result box: nothing of it is cut off."""
        return self.page.evaluate("""() => {
            const box = document.querySelector('#result').getBoundingClientRect();
            const img = document.querySelector('#result img').getBoundingClientRect();
            return img.top >= box.top - 1 && img.bottom <= box.bottom + 1
                && img.left >= box.left - 1 && img.right <= box.right + 1; }""")

    def toasts(self) -> list[str]:
        return self.page.get_by_test_id("toast-text").all_inner_texts()

    def shot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


UNTRANSLATED = re.compile(r"__i18n__|\[object Object\]|translation_metadata|\{[a-z_]+\}")


def untranslated_text(glm: GlmPage) -> list[str]:
    """Pieces of the page (text, the Style choices, the Examples) that show a raw i18n key or placeholder."""
    texts = [glm.page.locator("body").inner_text()]
    glm.page.locator("#style input").click()
    texts += glm.page.get_by_role("option").all_inner_texts()
    glm.page.keyboard.press("Escape")
    return [match.group(0) for text in texts for match in UNTRANSLATED.finditer(text)]
