"""English and Chinese strings, from ``assets/i18n/<lang>.json``.

The page translates in the browser through ``gr.I18n``; messages made on the server (errors, status) are
translated here, in the language of the request's Accept-Language header, since Gradio does not translate
``gr.Error`` text.
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

from .sizes import ASSETS_DIR

LANGUAGES = ("en", "zh")
DEFAULT_LANGUAGE = "en"
# Browser locales Gradio's front end reports for Chinese; all get the Simplified Chinese strings.
CHINESE_LOCALES = ("zh", "zh-CN", "zh-TW", "zh-HK", "zh-SG")


class Translator:
    """Looks strings up by key and language; every key exists in every language (checked on load)."""

    def __init__(self, tables: dict[str, dict[str, str]]) -> None:
        self.tables = tables

    def t(self, key: str, lang: str = DEFAULT_LANGUAGE, **params: object) -> str:
        table = self.tables.get(lang, self.tables[DEFAULT_LANGUAGE])
        text = table[key]
        return text.format(**params) if params else text

    def gradio_tables(self) -> dict[str, dict[str, str]]:
        """Keyword arguments for ``gr.I18n``: one table per browser locale."""
        tables = {"en": self.tables["en"]}
        tables.update({locale: self.tables["zh"] for locale in CHINESE_LOCALES})
        return tables


def language_of(accept_language: str | None) -> str:
    """The first supported language in an Accept-Language header, by quality; English otherwise."""
    if not accept_language:
        return DEFAULT_LANGUAGE
    choices: list[tuple[float, int, str]] = []
    for position, part in enumerate(accept_language.split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        match = re.search(r"q=([0-9.]+)", params)
        if match:
            try:
                quality = float(match.group(1))
            except ValueError:
                quality = 0.0
        primary = tag.strip().lower().split("-")[0]
        if primary in LANGUAGES and quality > 0:
            choices.append((-quality, position, primary))
    return min(choices)[2] if choices else DEFAULT_LANGUAGE


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def load_translations(folder: Path = ASSETS_DIR / "i18n") -> Translator:
    """Load every language and refuse files whose keys or ``{placeholders}`` differ, naming the key."""
    tables = {lang: json.loads((folder / f"{lang}.json").read_text(encoding="utf-8")) for lang in LANGUAGES}
    reference = tables[DEFAULT_LANGUAGE]
    for lang, table in tables.items():
        missing = sorted(set(reference) - set(table))
        extra = sorted(set(table) - set(reference))
        if missing or extra:
            raise ValueError(f"i18n/{lang}.json: missing keys {missing}, keys not in en.json {extra}")
        for key, text in table.items():
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"i18n/{lang}.json: key {key!r} has no text")
            if _fields(text) != _fields(reference[key]):
                raise ValueError(
                    f"i18n/{lang}.json: key {key!r} has placeholders {_fields(text)}, en has {_fields(reference[key])}"
                )
    return Translator(tables)
