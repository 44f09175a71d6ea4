"""Styles are data: the shipped file loads and is checked, templates wrap the prompt, negatives are joined."""

from __future__ import annotations

import json

import pytest

from glmimage.styles import NO_STYLE, Style, StyleBook, apply_style, load_styles

INK = Style("ink", {"en": "Ink", "zh": "水墨"}, "ink painting of {prompt}, rice paper", "photo, 3d render")


def write_styles(tmp_path, entries):
    path = tmp_path / "styles.json"
    path.write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")
    return path


def entry(style_id="ink", en="Ink", zh="水墨", prompt="ink painting of {prompt}", negative="photo"):
    return {"id": style_id, "name": {"en": en, "zh": zh}, "prompt": prompt, "negative_prompt": negative}


def test_shipped_styles_load_with_none_first_and_english_and_chinese_names(styles):
    assert styles.ids[0] == NO_STYLE
    assert len(styles) >= 5
    for style_id in styles.ids[1:]:
        style = styles.get(style_id)
        assert style.prompt.count("{prompt}") == 1
        assert style.name["en"].strip() and style.name["zh"].strip()


def test_no_style_leaves_the_prompts_as_written_but_trimmed():
    styled = apply_style(None, "  a red apple  ", " blurry ")
    assert (styled.prompt, styled.negative_prompt) == ("a red apple", "blurry")


def test_a_style_puts_the_prompt_into_its_template():
    assert apply_style(INK, "a crane", "").prompt == "ink painting of a crane, rice paper"


def test_the_users_negative_prompt_comes_first_and_the_styles_follows():
    assert apply_style(INK, "a crane", "blurry").negative_prompt == "blurry, photo, 3d render"


def test_with_an_empty_user_negative_only_the_styles_negative_is_used():
    assert apply_style(INK, "a crane", "   ").negative_prompt == "photo, 3d render"


def test_a_style_without_negative_keeps_the_users_negative_alone():
    bare = Style("bare", {"en": "Bare", "zh": "素"}, "{prompt}, minimal", "")
    assert apply_style(bare, "a crane", "blurry").negative_prompt == "blurry"


def test_braces_and_placeholder_text_in_the_prompt_are_kept_literally():
    styled = apply_style(INK, "a sign reading {prompt} and {0} {name}", "")
    assert styled.prompt == "ink painting of a sign reading {prompt} and {0} {name}, rice paper"


def test_chinese_prompt_is_wrapped_unchanged(styles):
    style_id = styles.ids[1]
    styled = styles.apply(style_id, "一只可爱的猫", "")
    assert "一只可爱的猫" in styled.prompt
    assert styled.prompt == styles.get(style_id).prompt.replace("{prompt}", "一只可爱的猫")


def test_style_book_knows_its_ids_and_refuses_unknown_ones(styles):
    assert NO_STYLE in styles and styles.ids[1] in styles
    assert "no-such-style" not in styles and None not in styles
    assert styles.get(NO_STYLE) is None
    with pytest.raises(KeyError):
        styles.get("no-such-style")


def test_style_book_apply_with_none_is_plain_prompts(styles):
    styled = styles.apply(NO_STYLE, "a red apple", "")
    assert (styled.prompt, styled.negative_prompt) == ("a red apple", "")


def test_a_valid_file_loads_in_file_order(tmp_path):
    book = load_styles(write_styles(tmp_path, [entry("b", "B", "乙"), entry("a", "A", "甲")]))
    assert book.ids == [NO_STYLE, "b", "a"]
    assert isinstance(book, StyleBook) and len(book) == 2


def test_negative_prompt_is_optional_in_the_file(tmp_path):
    data = entry()
    del data["negative_prompt"]
    assert load_styles(write_styles(tmp_path, [data])).get("ink").negative_prompt == ""


@pytest.mark.parametrize(
    "entries, words",
    [
        ({"ink": entry()}, "expected a list"),
        (["ink"], "must be an object"),
        ([entry(style_id="")], "needs an 'id'"),
        ([entry(style_id=NO_STYLE)], "needs an 'id'"),
        ([entry(), entry(en="Other", zh="别的")], "duplicate id"),
        ([entry(), entry(style_id="ink2", zh="别的")], "duplicate 'en' name"),
        ([entry(), entry(style_id="ink2", en="Other")], "duplicate 'zh' name"),
        ([entry(zh="  ")], "missing the 'zh' name"),
        ([{**entry(), "name": "Ink"}], "'name' must map"),
        ([entry(prompt="ink painting")], "{prompt} exactly once"),
        ([entry(prompt="{prompt} and {prompt}")], "{prompt} exactly once"),
        ([entry(negative=["photo"])], "'negative_prompt' must be text"),
    ],
)
def test_a_broken_styles_file_is_refused_naming_the_style_and_the_problem(tmp_path, entries, words):
    with pytest.raises(ValueError) as caught:
        load_styles(write_styles(tmp_path, entries))
    assert words in str(caught.value)
    assert "styles.json" in str(caught.value)
