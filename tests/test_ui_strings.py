"""Every visible string of the page is a translation key present in both languages."""

from __future__ import annotations

import json

import pytest

from glmimage.config import Settings
from glmimage.i18n import load_translations

I18N_PREFIX = "__i18n__"
# Components whose text the server fills in the visitor's language (status, privacy notice, and the operator's
# maintenance banner and support line).
SERVER_TRANSLATED = {"model-status", "privacy-notice", "maintenance-banner", "contact"}


def _key(value: object) -> str | None:
    """The translation key of an i18n value, or None when the value is plain text."""
    key = getattr(value, "key", None)
    if isinstance(key, str):
        return key
    if isinstance(value, str) and value.startswith(I18N_PREFIX):
        return json.loads(value[len(I18N_PREFIX) :])["key"]
    return None


@pytest.fixture(scope="module")
def page():
    from glmimage.web.server import create_app

    return create_app(Settings(model="tiny", warmup=False))


def _visible_texts(demo):
    import gradio as gr

    for block in demo.blocks.values():
        for attr in ("label", "placeholder", "info"):
            value = getattr(block, attr, None)
            if value:
                yield block, attr, value
        if isinstance(block, (gr.Button, gr.Markdown)) and block.elem_id not in SERVER_TRANSLATED:
            yield block, "value", block.value


def test_every_label_placeholder_info_and_button_text_is_a_translation_key(page):
    plain = [
        f"{type(b).__name__}#{b.elem_id}.{attr}={value!r}"
        for b, attr, value in _visible_texts(page.demo)
        if _key(value) is None
    ]
    assert plain == []


def test_every_key_the_page_uses_exists_in_english_and_chinese(page):
    tables = page.i18n.translations
    used = {_key(value) for _, _, value in _visible_texts(page.demo)}
    used |= {
        _key(label) for b in page.demo.blocks.values() for label, _ in getattr(b, "choices", None) or [] if _key(label)
    }
    assert used, "the page should use translation keys"
    for locale in ("en", "zh-CN"):
        missing = sorted(k for k in used if k not in tables[locale])
        assert missing == [], f"{locale} lacks {missing}"


def test_style_choices_are_translated_names(page):
    style = next(b for b in page.demo.blocks.values() if getattr(b, "elem_id", None) == "style")
    keys = [_key(label) for label, _ in style.choices]
    assert all(keys) and len(keys) == 21
    assert page.i18n.translations["zh-CN"]["style.chinese_ink"] != page.i18n.translations["en"]["style.chinese_ink"]


def test_a_key_missing_in_one_language_stops_loading(tmp_path):
    (tmp_path / "en.json").write_text('{"a": "A", "b": "B"}', encoding="utf-8")
    (tmp_path / "zh.json").write_text('{"a": "甲"}', encoding="utf-8")
    with pytest.raises(ValueError, match="missing keys \\['b'\\]"):
        load_translations(tmp_path)


def test_placeholders_must_match_between_languages(tmp_path):
    (tmp_path / "en.json").write_text('{"a": "{n} images"}', encoding="utf-8")
    (tmp_path / "zh.json").write_text('{"a": "图片"}', encoding="utf-8")
    with pytest.raises(ValueError, match="placeholders"):
        load_translations(tmp_path)
