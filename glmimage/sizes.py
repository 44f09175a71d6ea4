"""CogView4's size rules and the aspect-ratio presets (data in ``assets/sizes.json``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .limits import MAX_PIXELS, MAX_SIDE, MIN_SIDE, SIDE_MULTIPLE

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"


@dataclass(frozen=True)
class SizePreset:
    ratio: str
    width: int
    height: int

    @property
    def label(self) -> str:
        return f"{self.ratio} · {self.width}×{self.height}"


def size_problem(width: int, height: int) -> str | None:
    """The first CogView4 size rule that ``width`` x ``height`` breaks, as a message key, or None."""
    for side in (width, height):
        if not MIN_SIDE <= side <= MAX_SIDE:
            return "error.side_range"
        if side % SIDE_MULTIPLE:
            return "error.side_multiple"
    if width * height > MAX_PIXELS:
        return "error.too_many_pixels"
    return None


def largest_legal_side(other: int) -> int:
    """The largest side that, next to ``other``, keeps the image within the pixel limit (for the UI controls)."""
    side = min(MAX_SIDE, MAX_PIXELS // max(other, 1))
    return max(MIN_SIDE, side - side % SIDE_MULTIPLE)


def load_size_presets(path: Path = ASSETS_DIR / "sizes.json") -> list[SizePreset]:
    """Read the presets and refuse a file with a preset that breaks the rules, naming it."""
    entries = json.loads(path.read_text("utf-8"))
    presets = [SizePreset(str(p["ratio"]), int(p["width"]), int(p["height"])) for p in entries]
    for preset in presets:
        problem = size_problem(preset.width, preset.height)
        if problem:
            raise ValueError(f"{path.name}: size preset {preset.label} breaks CogView4's size rules ({problem})")
    if len({p.label for p in presets}) != len(presets):
        raise ValueError(f"{path.name}: size presets must be unique")
    return presets
