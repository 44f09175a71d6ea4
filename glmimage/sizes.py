"""Size rules (a family's row, CogView4's by default), fitting a picture's size to them, and the aspect-ratio
presets (data in ``assets/sizes.json``)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from .models.families import COGVIEW4, Family, SizeRules

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"


@dataclass(frozen=True)
class SizePreset:
    ratio: str
    width: int
    height: int

    @property
    def label(self) -> str:
        return f"{self.ratio} · {self.width}×{self.height}"


def size_problem(width: int, height: int, rules: SizeRules = COGVIEW4.sizes) -> str | None:
    """The first size rule (CogView4's unless ``rules`` says otherwise) that ``width`` x ``height`` breaks, as a
    message key, or None."""
    for side in (width, height):
        if not rules.min_side <= side <= rules.max_side:
            return "error.side_range"
        if side % rules.multiple:
            return "error.side_multiple"
    if width * height > rules.max_pixels:
        return "error.too_many_pixels"
    if rules.max_aspect is not None and max(width, height) > rules.max_aspect * min(width, height):
        return "error.aspect"
    return None


def fit_size(width: int, height: int, rules: SizeRules) -> tuple[int, int]:
    """The legal size closest in shape to ``width`` x ``height``: scaled (up or down) into the side and pixel
    bounds, each side rounded to the nearest multiple. The shape changes only where no legal size keeps it (a
    1:20 strip becomes the longest legal one)."""
    if width < 1 or height < 1:
        raise ValueError(f"a picture needs a positive size, got {width}x{height}")
    step = rules.multiple
    scale = 1.0
    if min(width, height) < rules.min_side:
        scale = rules.min_side / min(width, height)
    if max(width, height) * scale > rules.max_side:
        scale = rules.max_side / max(width, height)
    scale = min(scale, math.sqrt(rules.max_pixels / (width * height)))

    def side(value: float) -> int:
        rounded = max(step, round(value / step) * step)
        return min(rules.max_side, max(rules.min_side, rounded))

    fitted = [side(width * scale), side(height * scale)]
    long = 0 if fitted[0] >= fitted[1] else 1
    if rules.max_aspect is not None:
        longest = int(fitted[1 - long] * rules.max_aspect) // step * step
        fitted[long] = min(fitted[long], longest)
    while fitted[0] * fitted[1] > rules.max_pixels and fitted[long] - step >= rules.min_side:
        fitted[long] -= step  # rounding up went past the pixel bound: give back one step on the long side
    return fitted[0], fitted[1]


def size_for_reference(width: int, height: int, family: Family) -> tuple[int, int]:
    """The default output size of an edit: the first picture's size, fitted to the family's output rules."""
    return fit_size(width, height, family.sizes)


def largest_legal_side(other: int, rules: SizeRules = COGVIEW4.sizes) -> int:
    """The largest side that, next to ``other``, keeps the image within the pixel limit of ``rules`` (CogView4's
    unless the page's model has others), for the page's size controls."""
    side = min(rules.max_side, rules.max_pixels // max(other, 1))
    return max(rules.min_side, side - side % rules.multiple)


def load_size_presets(path: Path = ASSETS_DIR / "sizes.json", family: Family = COGVIEW4) -> list[SizePreset]:
    """Read the presets and refuse a file with a preset that breaks the rules of ``family`` (the model the page is
    built for), naming it."""
    entries = json.loads(path.read_text("utf-8"))
    presets = [SizePreset(str(p["ratio"]), int(p["width"]), int(p["height"])) for p in entries]
    for preset in presets:
        problem = size_problem(preset.width, preset.height, family.sizes)
        if problem:
            raise ValueError(
                f"{path.name}: size preset {preset.label} breaks {family.display_name}'s size rules ({problem})"
            )
    if len({p.label for p in presets}) != len(presets):
        raise ValueError(f"{path.name}: size presets must be unique")
    return presets
