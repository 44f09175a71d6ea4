"""Intake of uploaded pictures (edits): hostile until proven otherwise.

A picture passes, in this order: its byte size (before it is read), its format from the header (PNG, JPEG or WebP,
opened by those three Pillow plugins only), its pixel count from the header (before anything is decoded: a 1 kB
file can claim 30000 x 30000), its shape, then decoding. What comes out is a FRESH RGB image built from pixels
only: EXIF orientation applied first, colours converted to sRGB when an ICC profile says they are not, alpha laid
on white, 16-bit reduced to 8; EXIF, GPS, XMP, ICC and text chunks stay behind with the original bytes. Only that
copy is stored, in the session's folder, so it goes when the session goes, like the results.

Every refusal is an :class:`~glmimage.errors.InputError` whose key is in ``assets/i18n``; nothing is stored then.
"""

from __future__ import annotations

import io
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from .errors import InputError
from .limits import MAX_UPLOAD_PIXELS
from .models.families import Family
from .requests import check_reference_count
from .sessions import Session, save_png

log = logging.getLogger("glmimage.images")

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_PLAIN_MODES = ("RGB", "L", "1", "CMYK", "YCbCr", "LAB", "HSV")
_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))

Source = str | os.PathLike[str] | bytes


@dataclass(frozen=True)
class Picture:
    """A picture that passed intake: its clean copy in the session folder, and its size after orientation."""

    path: Path
    width: int
    height: int


def _megabytes(size: int) -> float:
    return round(size / 2**20, 1)


def _too_large(size: int, max_bytes: int) -> InputError:
    return InputError(
        "error.upload_too_large",
        f"The picture is too large: {_megabytes(size)} MB, at most {_megabytes(max_bytes)} MB per picture.",
        size_mb=_megabytes(size),
        max_mb=_megabytes(max_bytes),
    )


def _read_bounded(source: Source, max_bytes: int) -> bytes:
    """The file's bytes, refusing anything over ``max_bytes`` before reading it (and anything not a plain file)."""
    if isinstance(source, bytes):
        if len(source) > max_bytes:
            raise _too_large(len(source), max_bytes)
        return source
    try:
        with open(source, "rb") as file:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise InputError("error.upload_type", "Only PNG, JPEG and WebP pictures can be used.")
            if info.st_size > max_bytes:
                raise _too_large(info.st_size, max_bytes)
            data = file.read(max_bytes + 1)  # the file may have grown since fstat
    except OSError:
        raise InputError(
            "error.upload_unreadable", "The uploaded file could not be read; please upload it again."
        ) from None
    if len(data) > max_bytes:
        raise _too_large(len(data), max_bytes)
    return data


def _to_8_bit(image: Image.Image) -> Image.Image:
    """16-bit (and 32-bit integer) grey to 8-bit grey by scaling; Pillow's own convert clips at 255 (white)."""
    values = np.asarray(image).astype(np.int64)
    return Image.fromarray((np.clip(values, 0, 65535) >> 8).astype(np.uint8), "L")


def _to_srgb(image: Image.Image, icc: bytes) -> Image.Image:
    """Convert to sRGB with the picture's own ICC profile (a Display P3 phone photo, a CMYK print file); a profile
    that cannot be read is ignored (the colours are then taken as sRGB), never a reason to fail."""
    output = "RGBA" if image.mode in _ALPHA_MODES else "RGB"
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        converted = ImageCms.profileToProfile(image, source, _SRGB, outputMode=output)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        log.info("ignoring an unreadable ICC profile in an upload")
        return image
    return converted if converted is not None else image


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any mode the three formats decode to, as RGB that looks like the picture did."""
    if image.mode in _SIXTEEN_BIT_MODES:
        image = _to_8_bit(image)
    elif image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode == "PA":
        image = image.convert("RGBA")
    icc = image.info.get("icc_profile")
    if icc:
        image = _to_srgb(image, icc)
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode not in _PLAIN_MODES:
        raise InputError(
            "error.upload_mode",
            f"Pictures of this kind ({image.mode}) cannot be used; please save it as an ordinary PNG or JPEG.",
            mode=image.mode,
        )
    return image.convert("RGB")


def _oriented(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (a phone photo taken upright stays upright); a broken EXIF block is ignored."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - hostile EXIF: keep the pixels as stored rather than refuse the picture
        log.info("ignoring an unreadable EXIF orientation in an upload")
        return image


def read_upload(
    source: Source,
    *,
    max_bytes: int,
    max_pixels: int = MAX_UPLOAD_PIXELS,
    max_aspect: float | None = None,
    model: str = "",
) -> Image.Image:
    """Check and decode one uploaded picture; returns a fresh RGB image that carries no metadata at all.

    ``source`` is a path (Gradio's upload) or the bytes. Animated pictures (APNG, animated WebP) give their first
    frame. ``max_aspect`` (long side / short side) refuses pictures the model cannot read; ``model`` names it then.
    """
    data = _read_bounded(source, max_bytes)
    try:
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
            _check_header(image, max_pixels, max_aspect, model)  # nothing is decoded yet
            image.seek(0)  # animated: the first frame
            image.load()
            rgb = _to_rgb(_oriented(image))
            # A new image from the pixel bytes alone: no info dict, no EXIF, no ICC, no text chunk survives.
            return Image.frombytes("RGB", rgb.size, rgb.tobytes())
    except InputError:
        raise
    except Image.DecompressionBombError:  # Pillow's own bound (2 x MAX_IMAGE_PIXELS), met while opening
        raise _too_many_pixels(max_pixels) from None
    except UnidentifiedImageError:
        raise InputError("error.upload_type", "Only PNG, JPEG and WebP pictures can be used.") from None
    except Exception:  # noqa: BLE001 - any decoder failure on hostile bytes is a refusal, never a crash
        log.info("refused an upload that could not be decoded", exc_info=True)
        raise InputError(
            "error.upload_corrupt", "The picture could not be read: the file is damaged or incomplete."
        ) from None


def _check_header(image: Image.Image, max_pixels: int, max_aspect: float | None, model: str) -> None:
    """The checks a picture's header alone answers: its pixel count (a decompression bomb) and its shape."""
    width, height = image.size
    if width * height > max_pixels:
        raise _too_many_pixels(max_pixels)
    if max_aspect is not None and max(width, height) > max_aspect * min(width, height):
        raise InputError(
            "error.aspect",
            f"The picture is too long or too tall ({width}×{height}); {model} takes pictures up to {max_aspect:g}:1.",
            width=width,
            height=height,
            max_aspect=f"{max_aspect:g}",
            model=model,
        )


def check_upload_header(
    path: str | os.PathLike[str],
    *,
    max_bytes: int,
    max_pixels: int = MAX_UPLOAD_PIXELS,
    max_aspect: float | None = None,
    model: str = "",
) -> None:
    """What can be refused without decoding (the file's size, its format and pixel count from the header, its
    shape), cheap enough to run before a job may queue: a refused edit then leaves the queue, the history and the
    visitor's allowance as they were. :func:`read_upload` checks all of it again, then decodes."""
    try:
        info = os.stat(path)
    except OSError:
        raise InputError(
            "error.upload_unreadable", "The uploaded file could not be read; please upload it again."
        ) from None
    if not stat.S_ISREG(info.st_mode):
        raise InputError("error.upload_type", "Only PNG, JPEG and WebP pictures can be used.")
    if info.st_size > max_bytes:
        raise _too_large(info.st_size, max_bytes)
    try:
        with Image.open(path, formats=ALLOWED_FORMATS) as image:  # reads the header only
            _check_header(image, max_pixels, max_aspect, model)
    except InputError:
        raise
    except Image.DecompressionBombError:
        raise _too_many_pixels(max_pixels) from None
    except UnidentifiedImageError:
        raise InputError("error.upload_type", "Only PNG, JPEG and WebP pictures can be used.") from None
    except Exception:  # noqa: BLE001 - a header no decoder can read is a refusal, never a crash
        raise InputError(
            "error.upload_corrupt", "The picture could not be read: the file is damaged or incomplete."
        ) from None


def _too_many_pixels(max_pixels: int) -> InputError:
    megapixels = f"{max_pixels / 1e6:g}"
    return InputError(
        "error.upload_too_many_pixels",
        f"The picture has too many pixels: at most {megapixels} megapixels.",
        max_megapixels=megapixels,
    )


def intake_uploads(sources: Sequence[Source], session: Session, family: Family, max_bytes: int) -> list[Picture]:
    """Check every picture of an edit and store its clean copy in the session folder, in order.

    The count is checked first (the family's 1..N), then each picture; when one is refused, the copies already
    stored for this request are deleted, so a refused request leaves nothing behind.
    """
    check_reference_count(len(sources), family)
    pictures: list[Picture] = []
    try:
        for source in sources:
            image = read_upload(
                source, max_bytes=max_bytes, max_aspect=family.max_reference_aspect, model=family.display_name
            )
            path = save_png(image, session.new_file(".png"), None)
            pictures.append(Picture(path, image.width, image.height))
    except BaseException:
        for picture in pictures:
            picture.path.unlink(missing_ok=True)
        raise
    return pictures
