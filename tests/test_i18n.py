"""English and Chinese strings: both files complete and consistent, and the language picked from Accept-Language."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from glmimage.i18n import CHINESE_LOCALES, language_of, load_translations
from glmimage.sizes import ASSETS_DIR

HAN = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def translator():
    return load_translations()


@pytest.mark.parametrize(
    "header, lang",
    [
        (None, "en"),
        ("", "en"),
        ("zh-CN", "zh"),
        ("zh-TW,zh;q=0.9", "zh"),
        ("ZH-cn", "zh"),
        ("en-US,en;q=0.9,zh-CN;q=0.8", "en"),
        ("zh-CN,zh;q=0.9,en;q=0.8", "zh"),
        ("en;q=0.5, zh;q=0.8", "zh"),
        ("fr-FR,de;q=0.9", "en"),
        ("fr-FR,zh;q=0.3", "zh"),
        ("zh;q=0, en;q=0.1", "en"),
        ("*", "en"),
    ],
)
def test_language_is_the_best_supported_one_in_accept_language(header, lang):
    assert language_of(header) == lang


def test_every_key_exists_in_both_languages_with_the_same_placeholders(translator):
    en, zh = translator.tables["en"], translator.tables["zh"]
    assert set(en) == set(zh)
    for key in en:
        assert set(re.findall(r"{(\w+)}", en[key])) == set(re.findall(r"{(\w+)}", zh[key])), key


def test_chinese_error_messages_are_written_in_chinese(translator):
    error_keys = [key for key in translator.tables["en"] if key.startswith(("error.", "load.", "field."))]
    assert len(error_keys) > 20
    for key in error_keys:
        assert HAN.search(translator.tables["zh"][key]), key
        assert not HAN.search(translator.tables["en"][key]), key


def test_a_message_is_filled_in_with_its_values_in_each_language(translator):
    params = dict(field="Steps", min=1, max=100, value=101)
    assert translator.t("error.out_of_range", "en", **params) == "Steps must be from 1 to 100 (got 101)."
    chinese = translator.t(
        "error.out_of_range", "zh", **{**params, "field": translator.t("field.num_inference_steps", "zh")}
    )
    assert "1" in chinese and "100" in chinese and "101" in chinese and HAN.search(chinese)


def test_an_unsupported_language_falls_back_to_english(translator):
    assert translator.t("button.generate", "fr") == translator.t("button.generate", "en") == "Generate"


def test_the_public_labels_keep_their_english_names(translator):
    assert translator.t("label.prompt", "en") == "Prompt"
    assert translator.t("button.generate", "en") == "Generate"


def test_gradio_tables_give_every_chinese_locale_the_chinese_strings(translator):
    tables = translator.gradio_tables()
    assert tables["en"] is translator.tables["en"]
    for locale in CHINESE_LOCALES:
        assert tables[locale] is translator.tables["zh"]


@pytest.fixture
def i18n_copy(tmp_path):
    folder = tmp_path / "i18n"
    shutil.copytree(ASSETS_DIR / "i18n", folder)
    return folder


def edit(folder, lang, change):
    path = folder / f"{lang}.json"
    table = json.loads(path.read_text(encoding="utf-8"))
    change(table)
    path.write_text(json.dumps(table, ensure_ascii=False), encoding="utf-8")


def test_a_key_missing_from_chinese_is_refused_naming_it(i18n_copy):
    edit(i18n_copy, "zh", lambda t: t.pop("error.empty_prompt"))
    with pytest.raises(ValueError, match=r"zh\.json: missing keys \['error.empty_prompt'\]"):
        load_translations(i18n_copy)


def test_a_key_only_in_chinese_is_refused_naming_it(i18n_copy):
    edit(i18n_copy, "zh", lambda t: t.update({"error.extra": "多余"}))
    with pytest.raises(ValueError, match="error.extra"):
        load_translations(i18n_copy)


def test_a_placeholder_that_differs_between_languages_is_refused_naming_the_key(i18n_copy):
    edit(i18n_copy, "zh", lambda t: t.update({"error.out_of_range": "{field}必须在 {min} 到 {maximum} 之间"}))
    with pytest.raises(ValueError, match="error.out_of_range"):
        load_translations(i18n_copy)


def test_an_empty_string_is_refused_naming_the_key(i18n_copy):
    edit(i18n_copy, "en", lambda t: t.update({"label.seed": " "}))
    with pytest.raises(ValueError, match="label.seed"):
        load_translations(i18n_copy)
