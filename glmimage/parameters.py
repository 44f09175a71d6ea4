"""Reading generation parameters back from a picture: PNGs made by GLM Image, AUTOMATIC1111 or Fooocus.

All three write AUTOMATIC1111's ``parameters`` text chunk (Fooocus in its "A1111" metadata scheme): the prompt, an
optional ``Negative prompt:`` part, and a last line of ``Key: value`` pairs (``Steps``, ``CFG scale``, ``Seed``,
``Size``, ``Model``; GLM Image adds ``Style``). The dropped file is hostile until proven otherwise: only a PNG is
read, only its text chunks (the pixels are never decoded, so a decompression bomb costs nothing), and its size is
bounded before it is read.

A GLM Image PNG holds the *styled* prompt (what the model received) and the style's id. Reading it back gives the
prompt as typed, found by taking the style's template off again, so that "Use these settings" with the same style
gives the model the same text and the same pixels.
"""

from __future__ import annotations

import io
import json
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from .errors import InputError
from .styles import NO_STYLE, PLACEHOLDER, StyleBook, StyledPrompt

# A PNG made by an image tool is a few MB; anything larger is not worth reading for its text.
MAX_PARAMETERS_FILE_BYTES = 50 * 2**20
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# AUTOMATIC1111's own pattern for one "Key: value" pair of the last line (modules/infotext_utils.py); a value in
# double quotes is JSON and may hold commas.
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")
_NEGATIVE = "Negative prompt:"


@dataclass(frozen=True)
class ImageParameters:
    """What a picture says about how it was made; ``None`` where it does not say. ``style`` is set only when the
    picture names one of this app's styles."""

    prompt: str
    negative_prompt: str
    seed: int | None
    width: int | None
    height: int | None
    num_inference_steps: int | None
    guidance_scale: float | None
    model: str | None
    style: str | None = None

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        if values["style"] is None:
            del values["style"]
        return values


def read_parameters(source: str | Path | bytes, styles: StyleBook) -> ImageParameters:
    """The parameters stored in a PNG file (a path or its bytes); raises InputError when there are none."""
    data = _read_bounded(source)
    if not data.startswith(PNG_SIGNATURE):
        raise InputError("error.params_not_png", "This file is not a PNG picture.")
    text = _parameters_chunk(data)
    if not text or not text.strip():
        raise InputError("error.params_none", "This picture carries no generation parameters.")
    return parse_a1111(text, styles)


def parse_a1111(text: str, styles: StyleBook) -> ImageParameters:
    """Parse AUTOMATIC1111's ``parameters`` text, as A1111's own reader does."""
    *lines, last = text.strip().split("\n")
    if len(_PARAM.findall(last)) < 3:  # A1111's rule: a last line with fewer pairs is still part of the prompt
        lines.append(last)
        last = ""
    prompt: list[str] = []
    negative: list[str] = []
    for line in lines:
        line = line.strip()
        if line.startswith(_NEGATIVE) and not negative:
            negative.append(line[len(_NEGATIVE) :].strip())
        elif negative:
            negative.append(line)
        else:
            prompt.append(line)
    pairs = {key.strip(): _unquote(value.strip()) for key, value in _PARAM.findall(last)}
    if not prompt and not pairs:
        raise InputError("error.params_none", "This picture carries no generation parameters.")

    width = height = None
    size = _SIZE.match(pairs.get("Size", ""))
    if size:
        width, height = int(size.group(1)), int(size.group(2))
    final_prompt, final_negative = "\n".join(prompt), "\n".join(negative)
    style = pairs.get("Style")
    if style is not None and (style == NO_STYLE or style not in styles):
        style = NO_STYLE if style == NO_STYLE else None
    typed = _unstyled(styles, style, final_prompt, final_negative) if style else None
    if style and typed is None:  # the text does not fit the style's template (edited by hand): keep it as it is
        style = None
    prompt_text, negative_text = typed or (final_prompt, final_negative)
    return ImageParameters(
        prompt=prompt_text,
        negative_prompt=negative_text,
        seed=_whole(pairs.get("Seed")),
        width=width,
        height=height,
        num_inference_steps=_whole(pairs.get("Steps")),
        guidance_scale=_number(pairs.get("CFG scale")),
        model=pairs.get("Model") or None,
        style=style,
    )


def _unstyled(styles: StyleBook, style_id: str, prompt: str, negative: str) -> tuple[str, str] | None:
    """The prompts as typed, given the styled ones: the inverse of ``apply_style`` for this style, or None when the
    text is not what that style writes."""
    style = styles.get(style_id)
    if style is None:
        return prompt, negative
    before, after = style.prompt.split(PLACEHOLDER)
    if not (prompt.startswith(before) and prompt.endswith(after) and len(prompt) >= len(before) + len(after)):
        return None
    typed = prompt[len(before) : len(prompt) - len(after)]
    style_negative = style.negative_prompt.strip()
    if not negative:  # no negative part at all: the model takes none (GLM-Image), or the style has none
        return typed.strip(), ""
    if style_negative and negative == style_negative:
        typed_negative = ""
    elif style_negative and negative.endswith(", " + style_negative):
        typed_negative = negative[: -len(", " + style_negative)]
    elif not style_negative:
        typed_negative = negative
    else:
        return None
    if styles.apply(style_id, typed, typed_negative) != StyledPrompt(prompt, negative):
        return None
    return typed.strip(), typed_negative.strip()


def _read_bounded(source: str | Path | bytes) -> bytes:
    if isinstance(source, bytes):
        data = source
    else:
        with open(source, "rb") as file:
            data = file.read(MAX_PARAMETERS_FILE_BYTES + 1)
    if len(data) > MAX_PARAMETERS_FILE_BYTES:
        raise InputError(
            "error.params_too_large",
            f"This file is too large to read: at most {MAX_PARAMETERS_FILE_BYTES // 2**20} MB.",
            max_mb=MAX_PARAMETERS_FILE_BYTES // 2**20,
        )
    return data


def _parameters_chunk(data: bytes) -> str | None:
    """The ``parameters`` text of a PNG, from the text chunks before the image data (where Pillow, and so A1111,
    Fooocus and GLM Image, write it), without decoding any pixel."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
                text = image.info.get("parameters")
    except Image.DecompressionBombError:
        raise InputError("error.params_unreadable", "This picture cannot be read: absurd dimensions.") from None
    except (OSError, ValueError, SyntaxError):  # Pillow's words for a broken file or an oversized text chunk
        raise InputError("error.params_unreadable", "This picture cannot be read: the file is damaged.") from None
    return text if isinstance(text, str) else None


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        try:
            return str(json.loads(value))
        except ValueError:
            return value
    return value


def _whole(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _number(value: str | None) -> float | None:
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is None or number == number else None
