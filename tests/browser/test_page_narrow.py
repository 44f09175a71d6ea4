"""On a phone-sized window (390×844) the page stacks into one column: nothing sticks out or overlaps, and
Generate can be reached and works."""

from __future__ import annotations

import itertools

import pytest
from playwright.sync_api import expect

from .glm_page import SMALL_PRESET

pytestmark = pytest.mark.browser

PHONE = {"width": 390, "height": 844}
# Blocks a visitor uses, none inside another, so no two may overlap.
KEY_ELEMENTS = [
    "#header",
    "#model-status",
    "#prompt",
    "#generate",
    "#stop",
    "#style",
    "#size-preset",
    "#width",
    "#height",
    "#num-images",
    "#advanced",
    "#result",
    "#timings",
    "#seed-used",
    "#examples",
    "#history-empty",
    "#clear-history",
    "#new-session",
]


def overlap(a: dict, b: dict) -> float:
    width = min(a["x"] + a["width"], b["x"] + b["width"]) - max(a["x"], b["x"])
    height = min(a["y"] + a["height"], b["y"] + b["height"]) - max(a["y"], b["y"])
    return max(width, 0) * max(height, 0)


def test_narrow_window_has_no_overflow_or_overlap_and_generate_works(open_page):
    glm = open_page(locale="en-US", viewport=PHONE)
    page = glm.page
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"] + 1

    boxes = {selector: page.locator(selector).bounding_box() for selector in KEY_ELEMENTS}
    missing = [selector for selector, box in boxes.items() if box is None or box["width"] < 1]
    assert missing == []
    outside = [
        selector for selector, box in boxes.items() if box["x"] < -1 or box["x"] + box["width"] > PHONE["width"] + 1
    ]
    assert outside == []
    overlapping = [(a, b) for a, b in itertools.combinations(KEY_ELEMENTS, 2) if overlap(boxes[a], boxes[b]) > 1]
    assert overlapping == []
    glm.shot("07-en-narrow-390")

    glm.prepare("a tall lighthouse at dusk", preset=SMALL_PRESET, steps=1)
    generate = page.get_by_role("button", name="Generate")
    generate.scroll_into_view_if_needed()
    expect(generate).to_be_in_viewport()
    assert glm.generate_and_wait() == (512, 512)
    assert glm.image_is_whole_in_result()
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"] + 1
    glm.shot("07-en-narrow-390-generated")
