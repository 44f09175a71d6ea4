"""Style presets as data (``assets/styles.json``), in the manner of Fooocus' sdxl_styles.

A style is a prompt template with exactly one ``{prompt}`` and a negative prompt. Adding one touches no code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .sizes import ASSETS_DIR

NO_STYLE = "none"
PLACEHOLDER = "{prompt}"
LANGUAGES = ("en", "zh")


@dataclass(frozen=True)
class Style:
    id: str
    name: dict[str, str]
    prompt: str
    negative_prompt: str


@dataclass(frozen=True)
class StyledPrompt:
    prompt: str
    negative_prompt: str


def apply_style(style: Style | None, prompt: str, negative_prompt: str) -> StyledPrompt:
    """Put the user's prompt into the style's template and join both negative prompts.

    ``str.replace`` rather than ``str.format``: a prompt may contain braces. The user's negative prompt comes
    first and the style's follows it; neither overwrites the other.
    """
    prompt = prompt.strip()
    negative_prompt = negative_prompt.strip()
    if style is None:
        return StyledPrompt(prompt, negative_prompt)
    negatives = [part for part in (negative_prompt, style.negative_prompt.strip()) if part]
    return StyledPrompt(style.prompt.replace(PLACEHOLDER, prompt), ", ".join(negatives))


class StyleBook:
    """The checked set of styles, by id, in file order."""

    def __init__(self, styles: list[Style]) -> None:
        self._styles = {style.id: style for style in styles}

    def __contains__(self, style_id: object) -> bool:
        return style_id == NO_STYLE or style_id in self._styles

    def __len__(self) -> int:
        return len(self._styles)

    @property
    def ids(self) -> list[str]:
        return [NO_STYLE, *self._styles]

    def get(self, style_id: str) -> Style | None:
        """The style, or None for "none". Raises KeyError for an unknown id (the caller validates first)."""
        if style_id == NO_STYLE:
            return None
        return self._styles[style_id]

    def apply(self, style_id: str, prompt: str, negative_prompt: str, *, takes_negative: bool = True) -> StyledPrompt:
        """The final prompts; for a model that takes no negative prompt (``Family.negative_prompt`` false) the
        style's negative part is left out, so the details show exactly what the model received."""
        final = apply_style(self.get(style_id), prompt, negative_prompt)
        return final if takes_negative else StyledPrompt(final.prompt, "")


def load_styles(path: Path = ASSETS_DIR / "styles.json") -> StyleBook:
    """Read and check the styles file; a broken entry stops the app with a message naming the style."""
    entries = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(entries, list):
        raise ValueError(f"{path.name}: expected a list of styles")
    styles: list[Style] = []
    seen_names: dict[str, set[str]] = {lang: set() for lang in LANGUAGES}
    for index, entry in enumerate(entries):
        label = entry.get("id", f"#{index + 1}") if isinstance(entry, dict) else f"#{index + 1}"
        problem = _style_problem(entry, {s.id for s in styles}, seen_names)
        if problem:
            raise ValueError(f"{path.name}: style {label!r}: {problem}")
        for lang in LANGUAGES:
            seen_names[lang].add(entry["name"][lang])
        styles.append(Style(entry["id"], dict(entry["name"]), entry["prompt"], entry.get("negative_prompt", "")))
    return StyleBook(styles)


def _style_problem(entry: object, seen_ids: set[str], seen_names: dict[str, set[str]]) -> str | None:
    if not isinstance(entry, dict):
        return "must be an object"
    style_id, name, template = entry.get("id"), entry.get("name"), entry.get("prompt")
    if not isinstance(style_id, str) or not style_id or style_id == NO_STYLE:
        return f"needs an 'id' other than {NO_STYLE!r}"
    if style_id in seen_ids:
        return "duplicate id"
    if not isinstance(name, dict):
        return "'name' must map each language to a name"
    for lang in LANGUAGES:
        if not isinstance(name.get(lang), str) or not name[lang].strip():
            return f"missing the {lang!r} name"
        if name[lang] in seen_names[lang]:
            return f"duplicate {lang!r} name {name[lang]!r}"
    if not isinstance(template, str) or template.count(PLACEHOLDER) != 1:
        return f"the prompt template must contain {PLACEHOLDER} exactly once"
    if not isinstance(entry.get("negative_prompt", ""), str):
        return "'negative_prompt' must be text"
    return None
