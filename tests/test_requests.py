"""Validation of a generation request: every rule of the issue, refused with the field and the allowed range.

Nothing is clamped or "fixed": a value outside the rules raises InputError, a value inside comes back unchanged.
"""

from __future__ import annotations

import math

import pytest

from glmimage import limits
from glmimage.errors import InputError
from glmimage.requests import GenerationRequest, check_token_count, validate_request

VALID = dict(
    prompt="a red apple",
    negative_prompt="",
    style="none",
    width=512,
    height=512,
    num_images=1,
    seed=7,
    randomize_seed=False,
    num_inference_steps=2,
    guidance_scale=3.5,
)


def validate(styles, **overrides):
    return validate_request(styles, **{**VALID, **overrides})


def refusal(styles, **overrides) -> InputError:
    with pytest.raises(InputError) as caught:
        validate(styles, **overrides)
    return caught.value


def test_valid_values_come_back_unchanged_as_a_typed_request(styles):
    request = validate(styles)
    assert request == GenerationRequest(**VALID)
    assert request.to_dict() == VALID


@pytest.mark.parametrize(
    "field, value",
    [
        ("width", 512),
        ("width", 2048),
        ("height", 2048),
        ("num_images", 4),
        ("seed", 0),
        ("seed", limits.MAX_SEED),
        ("num_inference_steps", 1),
        ("num_inference_steps", 100),
        ("guidance_scale", 0),
        ("guidance_scale", 20),
        ("num_images", 1),
    ],
)
def test_values_on_the_edges_of_each_range_are_accepted(styles, field, value):
    assert getattr(validate(styles, **{field: value}), field) == value


def test_the_largest_legal_images_are_accepted(styles):
    assert validate(styles, width=2048, height=1024).width == 2048
    assert validate(styles, width=1024, height=2048).height == 2048
    assert validate(styles, width=1440, height=1440).width * 1440 <= limits.MAX_PIXELS


def test_whole_floats_from_json_are_accepted_as_integers(styles):
    request = validate(styles, width=768.0, seed=12.0, num_inference_steps=3.0)
    assert (request.width, request.seed, request.num_inference_steps) == (768, 12, 3)
    assert all(type(v) is int for v in (request.width, request.seed, request.num_inference_steps))


def test_guidance_given_as_an_integer_becomes_a_float(styles):
    assert validate(styles, guidance_scale=5).guidance_scale == 5.0


def test_every_known_style_is_accepted(styles):
    for style_id in styles.ids:
        assert validate(styles, style=style_id).style == style_id


def test_prompt_text_is_kept_as_written_including_chinese_and_braces(styles):
    prompt = "  一只可爱的猫 {not a placeholder}\n"
    assert validate(styles, prompt=prompt).prompt == prompt


# (overrides, key, words the English message must contain: the field and the allowed range or rule)
BAD_INPUTS = [
    (dict(prompt=""), "error.empty_prompt", ["prompt", "empty"]),
    (dict(prompt="   \n\t  "), "error.empty_prompt", ["prompt", "empty"]),
    (dict(prompt=None), "error.not_text", ["prompt", "text"]),
    (dict(prompt=12), "error.not_text", ["prompt", "text"]),
    (dict(prompt="x" * (limits.MAX_PROMPT_CHARS + 1)), "error.text_too_long", ["prompt", "4000"]),
    (dict(negative_prompt="y" * (limits.MAX_PROMPT_CHARS + 1)), "error.text_too_long", ["negative_prompt", "4000"]),
    (dict(prompt="a cat\x00"), "error.control_chars", ["prompt", "control"]),
    (dict(negative_prompt=["blurry"]), "error.not_text", ["negative_prompt"]),
    (dict(style="no-such-style"), "error.unknown_style", ["no-such-style", "style"]),
    (dict(style=None), "error.unknown_style", ["style"]),
    (dict(width=500), "error.out_of_range", ["width", "512", "2048"]),
    (dict(width=2080), "error.out_of_range", ["width", "512", "2048"]),
    (dict(height=480), "error.out_of_range", ["height", "512", "2048"]),
    (dict(height=4096), "error.out_of_range", ["height", "512", "2048"]),
    (dict(width=520), "error.side_multiple", ["multiples of 32", "520"]),
    (dict(height=1000), "error.side_multiple", ["multiples of 32", "1000"]),
    (dict(width=2048, height=2048), "error.too_many_pixels", ["2,097,152", "2048×2048"]),
    (dict(width=1536, height=1536), "error.too_many_pixels", ["2,097,152", "1536×1536"]),
    (dict(width=512.5), "error.not_integer", ["width", "whole number", "512", "2048"]),
    (dict(width="512"), "error.not_integer", ["width", "whole number"]),
    (dict(num_inference_steps=0), "error.out_of_range", ["num_inference_steps", "1", "100"]),
    (dict(num_inference_steps=101), "error.out_of_range", ["num_inference_steps", "1", "100"]),
    (dict(num_inference_steps=2.5), "error.not_integer", ["num_inference_steps", "1", "100"]),
    (dict(guidance_scale=-0.1), "error.out_of_range", ["guidance_scale", "0.0", "20.0"]),
    (dict(guidance_scale=20.01), "error.out_of_range", ["guidance_scale", "0.0", "20.0"]),
    (dict(guidance_scale=math.nan), "error.not_number", ["guidance_scale", "finite", "0.0", "20.0"]),
    (dict(guidance_scale=math.inf), "error.not_number", ["guidance_scale", "finite"]),
    (dict(guidance_scale=-math.inf), "error.not_number", ["guidance_scale", "finite"]),
    (dict(guidance_scale="3.5"), "error.not_number", ["guidance_scale"]),
    (dict(guidance_scale=True), "error.not_number", ["guidance_scale"]),
    (dict(seed=-1), "error.out_of_range", ["seed", "0", "4294967295"]),
    (dict(seed=2**32), "error.out_of_range", ["seed", "0", "4294967295"]),
    (dict(seed=1.5), "error.not_integer", ["seed", "whole number", "4294967295"]),
    (dict(seed="42"), "error.not_integer", ["seed", "whole number"]),
    (dict(seed=None), "error.not_integer", ["seed"]),
    (dict(seed=True), "error.not_integer", ["seed"]),
    (dict(num_images=0), "error.out_of_range", ["num_images", "1", "4"]),
    (dict(num_images=5), "error.out_of_range", ["num_images", "1", "4"]),
    (dict(randomize_seed="yes"), "error.not_boolean", ["randomize_seed", "true or false"]),
]


@pytest.mark.parametrize("overrides, key, words", BAD_INPUTS, ids=[f"{k}-{o}"[:60] for o, k, _ in BAD_INPUTS])
def test_bad_input_is_refused_with_a_message_naming_the_field_and_the_allowed_range(styles, overrides, key, words):
    error = refusal(styles, **overrides)
    assert error.key == key
    for word in words:
        assert word in str(error), f"{word!r} missing from {str(error)!r}"


def test_refusals_carry_the_field_and_bounds_for_the_translated_message(styles):
    error = refusal(styles, num_inference_steps=101)
    assert error.params == dict(field="num_inference_steps", min=1, max=100, value=101)
    error = refusal(styles, width=2048, height=2048)
    assert error.params["max_pixels"] == limits.MAX_PIXELS and error.params["pixels"] == 2048 * 2048


def test_an_input_error_is_a_value_error(styles):
    with pytest.raises(ValueError):
        validate(styles, num_images=9)


def test_the_first_bad_field_is_the_one_reported(styles):
    assert refusal(styles, prompt="", width=1).key == "error.empty_prompt"
    assert "width" in str(refusal(styles, width=1, seed=-5))


def test_a_negative_prompt_may_be_empty_or_missing(styles):
    assert validate(styles, negative_prompt="").negative_prompt == ""
    assert validate(styles, negative_prompt=None).negative_prompt == ""


def test_prompt_at_the_character_cap_is_accepted(styles):
    assert len(validate(styles, prompt="z" * limits.MAX_PROMPT_CHARS).prompt) == limits.MAX_PROMPT_CHARS


def test_token_count_at_the_limit_passes_and_one_more_is_refused_naming_the_limit():
    check_token_count("prompt", limits.MAX_PROMPT_TOKENS)
    with pytest.raises(InputError) as caught:
        check_token_count("negative_prompt", limits.MAX_PROMPT_TOKENS + 1)
    assert caught.value.key == "error.too_many_tokens"
    assert "negative_prompt" in str(caught.value) and "1025 tokens" in str(caught.value)
    assert "at most 1024" in str(caught.value)
