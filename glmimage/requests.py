"""A generation request, and the validation that every request passes before it may queue for the GPU.

Validation never "fixes" input: anything outside the rules is refused with an :class:`InputError` that names
the field and the allowed range. Values arrive as raw JSON from the page or the API, so types are checked too.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from . import limits
from .errors import InputError
from .models.families import COGVIEW4, Family, SizeRules
from .sizes import size_problem
from .styles import StyleBook

# Characters that draw nothing on their own: format controls (ZWSP U+200B, ZWJ, BOM, word joiner), every kind of
# space and line or paragraph separator, and combining marks with no letter to sit on. A prompt made only of these
# is empty to the reader and to the model, however long it is.
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp", "Mn", "Me"})
# Letters and symbols that are blank by design: Hangul fillers (U+115F, U+1160, U+3164, U+FFA0), the braille
# blank (U+2800), Khmer inherent vowels (U+17B4, U+17B5) and the Mongolian vowel separator (U+180E).
BLANK_CHARACTERS = frozenset("\u115f\u1160\u17b4\u17b5\u180e\u2800\u3164\uffa0")


def is_blank(text: str) -> bool:
    """True when ``text`` has no character a reader could see (empty, spaces, zero-width or filler characters)."""
    return all(unicodedata.category(ch) in INVISIBLE_CATEGORIES or ch in BLANK_CHARACTERS for ch in text)


@dataclass(frozen=True)
class GenerationRequest:
    """What one press of Generate asks for (field names are those of the ``/generate`` API)."""

    prompt: str
    negative_prompt: str = ""
    style: str = limits.DEFAULT_STYLE
    width: int = limits.DEFAULT_WIDTH
    height: int = limits.DEFAULT_HEIGHT
    num_images: int = limits.DEFAULT_NUM_IMAGES
    seed: int = 0
    randomize_seed: bool = True
    num_inference_steps: int = limits.DEFAULT_STEPS
    guidance_scale: float = limits.DEFAULT_GUIDANCE
    # An edit: the cleaned copies of the visitor's pictures (glmimage.images.intake_upload), in the session folder.
    images: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The parameters, for the details JSON, the history and the session log. An edit says how many pictures
        it took, never where they are stored; a text-to-image request keeps exactly the ``/generate`` fields."""
        values = asdict(self)
        del values["images"]
        if self.images:
            values["reference_images"] = len(self.images)
        return values


def _text(field: str, value: object, *, required: bool) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise InputError("error.not_text", f"{field} must be text.", field=field)
    if len(value) > limits.MAX_PROMPT_CHARS:
        raise InputError(
            "error.text_too_long",
            f"{field} is too long: {len(value)} characters, at most {limits.MAX_PROMPT_CHARS}.",
            field=field,
            length=len(value),
            max=limits.MAX_PROMPT_CHARS,
        )
    # Control characters (a NUL byte, escape sequences) are never part of a description; tabs and newlines are.
    # A lone surrogate (JSON "\ud800") is no character at all: the tokenizer and UTF-8 files refuse it.
    if any(unicodedata.category(ch) in ("Cc", "Cs") and ch not in "\t\n\r" for ch in value):
        raise InputError("error.control_chars", f"{field} contains control characters.", field=field)
    if required and is_blank(value):
        raise InputError("error.empty_prompt", "Please enter a prompt: it is empty.", field=field)
    return value


def validate_prompt_text(value: object) -> str:
    """A prompt checked as ``/generate`` checks it (text, length, no control characters, not empty); also used
    for what the prompt enhancer may send out."""
    return _text("prompt", value, required=True)


def _integer(field: str, value: object, low: int, high: int) -> int:
    """A whole number in [low, high]; 512.0 is accepted (JSON has one number type), 512.5 and True are not."""
    whole = not isinstance(value, bool) and (
        isinstance(value, int) or (isinstance(value, float) and math.isfinite(value) and value.is_integer())
    )
    if not whole:
        raise InputError(
            "error.not_integer",
            f"{field} must be a whole number from {low} to {high}.",
            field=field,
            min=low,
            max=high,
        )
    number = int(value)
    _check_range(field, number, low, high)
    return number


def _number(field: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(
            "error.not_number",
            f"{field} must be a finite number from {low} to {high}.",
            field=field,
            min=low,
            max=high,
        )
    _check_range(field, value, low, high)
    return float(value)


def _check_range(field: str, value: float, low: float, high: float) -> None:
    """The one range check of whole and real numbers alike, after each has checked its type."""
    if not low <= value <= high:
        raise InputError(
            "error.out_of_range",
            f"{field} must be from {low} to {high} (got {value}).",
            field=field,
            min=low,
            max=high,
            value=value,
        )


def _size(width: int, height: int, rules: SizeRules) -> None:
    problem = size_problem(width, height, rules)
    if problem == "error.side_range":
        raise InputError(
            problem,
            f"width and height must be from {rules.min_side} to {rules.max_side} pixels (got {width}×{height}).",
            width=width,
            height=height,
            min=rules.min_side,
            max=rules.max_side,
        )
    if problem == "error.side_multiple":
        raise InputError(
            problem,
            f"width and height must be multiples of {rules.multiple} (got {width}×{height}).",
            width=width,
            height=height,
            multiple=rules.multiple,
        )
    if problem == "error.too_many_pixels":
        raise InputError(
            problem,
            f"width × height must be at most {rules.max_pixels:,} pixels (got {width}×{height} = {width * height:,}).",
            width=width,
            height=height,
            max_pixels=rules.max_pixels,
            pixels=width * height,
        )


def _unsupported(family: Family, field: str) -> InputError:
    """A parameter this model does not take: refused, naming the model, never dropped silently."""
    return InputError(
        "error.unsupported_field",
        f"{family.display_name} does not take a {field.replace('_', ' ')}: leave it empty.",
        field=field,
        model=family.display_name,
    )


def validate_request(
    styles: StyleBook,
    prompt: object,
    negative_prompt: object = "",
    style: object = limits.DEFAULT_STYLE,
    width: object = limits.DEFAULT_WIDTH,
    height: object = limits.DEFAULT_HEIGHT,
    num_images: object = limits.DEFAULT_NUM_IMAGES,
    seed: object = 0,
    randomize_seed: object = True,
    num_inference_steps: object = limits.DEFAULT_STEPS,
    guidance_scale: object = limits.DEFAULT_GUIDANCE,
    *,
    family: Family = COGVIEW4,
    images: Sequence[str] | None = None,
) -> GenerationRequest:
    """Check raw values field by field against ``family``'s rules and build the request; the first problem raises
    :class:`InputError`. ``images`` (an edit) are paths of pictures already through ``glmimage.images``' intake;
    here only their number is checked."""
    prompt_text = _text("prompt", prompt, required=True)
    negative_text = _text("negative_prompt", negative_prompt, required=False)
    if negative_text and not family.negative_prompt:
        raise _unsupported(family, "negative_prompt")
    if not isinstance(style, str) or style not in styles:
        # Echoed back in the message: as valid UTF-8 (a lone surrogate would break the JSON answer with a 500).
        shown = str(style)[:40].encode("utf-8", "replace").decode("utf-8")
        raise InputError("error.unknown_style", f"Unknown style {shown!r}: choose one of the list.", style=shown)
    rules = family.sizes
    width_px = _integer("width", width, rules.min_side, rules.max_side)
    height_px = _integer("height", height, rules.min_side, rules.max_side)
    _size(width_px, height_px, rules)
    count = _integer("num_images", num_images, limits.MIN_IMAGES, family.max_images)
    seed_value = _integer("seed", seed, 0, limits.MAX_SEED)
    if not isinstance(randomize_seed, bool):
        raise InputError("error.not_boolean", "randomize_seed must be true or false.", field="randomize_seed")
    steps = _integer("num_inference_steps", num_inference_steps, *family.steps_range)
    guidance = _number("guidance_scale", guidance_scale, *family.guidance_range)
    pictures: tuple[str, ...] = ()
    if images is not None:
        check_reference_count(len(images), family)
        pictures = tuple(str(path) for path in images)
    return GenerationRequest(
        prompt_text,
        negative_text,
        style,
        width_px,
        height_px,
        count,
        seed_value,
        randomize_seed,
        steps,
        guidance,
        pictures,
    )


def cost_of(request: GenerationRequest, family: Family = COGVIEW4) -> int:
    """What one request costs against a cost-weighted rate limit: its pixels × steps × images over the family's
    default request's (CogView4: 1024×1024, 50 steps, one image), rounded up, and never less than 1 (every request
    has a fixed cost of its own). The largest CogView4 request allowed costs 16."""
    width, height = family.default_size
    default = width * height * family.default_steps
    work = request.width * request.height * request.num_inference_steps * request.num_images
    return max(1, -(-work // default))


def check_reference_count(count: int, family: Family) -> None:
    """An edit takes 1 to ``family.max_reference_images`` pictures; a model that takes none refuses every edit."""
    if not family.takes_reference_images:
        raise InputError(
            "error.edit_unsupported",
            f"{family.display_name} draws from text only: it cannot edit pictures.",
            model=family.display_name,
        )
    if count < 1:
        raise InputError("error.no_images", "Add at least one picture to edit.", field="images")
    if count > family.max_reference_images:
        raise InputError(
            "error.too_many_images",
            f"Too many pictures: {count}; {family.display_name} takes at most {family.max_reference_images}.",
            field="images",
            count=count,
            max=family.max_reference_images,
            model=family.display_name,
        )


def check_token_count(field: str, tokens: int, family: Family = COGVIEW4) -> None:
    """Refuse a prompt longer than the model reads, instead of letting the pipeline cut it silently."""
    if family.max_prompt_tokens is not None and tokens > family.max_prompt_tokens:
        raise InputError(
            "error.too_many_tokens",
            f"{field} is too long: {tokens} tokens, the model reads at most {family.max_prompt_tokens}.",
            field=field,
            tokens=tokens,
            max=family.max_prompt_tokens,
        )


def check_prompt_tokens(
    prompt: str, negative_prompt: str, count_tokens: Callable[[str], int | None], family: Family = COGVIEW4
) -> None:
    """Check the final (styled) prompts against the token limit; ``count_tokens`` gives None before the
    tokenizer is loaded, and then the engine checks again once it is. A family without a token limit skips it."""
    if family.max_prompt_tokens is None:
        return
    for field, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
        tokens = count_tokens(text)
        if tokens is not None:
            check_token_count(field, tokens, family)
