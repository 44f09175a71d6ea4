"""Uploaded pictures are hostile until proven otherwise: each bad file is refused with a clear message key and
leaves nothing behind; odd but valid pictures come out as plain RGB; no metadata survives intake."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms, PngImagePlugin

from glmimage.errors import InputError
from glmimage.i18n import load_translations
from glmimage.images import intake_uploads, read_upload
from glmimage.models.families import COGVIEW4, GLM_IMAGE
from glmimage.sessions import Session

MB = 2**20


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A few hundred bytes whose header claims width x height RGB pixels (a decompression bomb's opening)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def photo(width: int = 48, height: int = 32) -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def refusal(source, **limits) -> InputError:
    with pytest.raises(InputError) as refused:
        read_upload(source, **{"max_bytes": 20 * MB, **limits})
    return refused.value


@pytest.fixture
def session(tmp_path) -> Session:
    return Session(files_root=str(tmp_path))


def stored_files(session: Session) -> list:
    return sorted(session.folder.rglob("*")) if session.folder.exists() else []


HOSTILE = [
    ("a text file named .png", b"just some text, not a picture\n" * 10, "error.upload_type"),
    ("a GIF", encode(photo(), "GIF"), "error.upload_type"),
    ("a BMP", encode(photo(), "BMP"), "error.upload_type"),
    ("a truncated PNG", encode(photo(), "PNG")[:300], "error.upload_corrupt"),
    ("a truncated JPEG", encode(photo(), "JPEG")[:200], "error.upload_corrupt"),
    ("a 30000x30000 PNG header", png_claiming(30000, 30000), "error.upload_too_many_pixels"),
    # Under Pillow's own bomb limit (~89 MP warns, ~179 MP refuses) but over ours: only our header check stops it,
    # and it does so before decoding (decoding this file would fail as corrupt instead).
    ("a 9000x9000 PNG header", png_claiming(9000, 9000), "error.upload_too_many_pixels"),
    ("an empty file", b"", "error.upload_type"),
]


@pytest.mark.parametrize(("what", "data", "key"), HOSTILE, ids=[case[0] for case in HOSTILE])
def test_hostile_files_are_refused_with_a_clear_message(what, data, key):
    assert refusal(data).key == key


def test_every_refusal_has_a_message_in_english_and_chinese():
    translator = load_translations()
    keys = {key for _, _, key in HOSTILE} | {
        "error.upload_too_large",
        "error.upload_unreadable",
        "error.upload_mode",
        "error.aspect",
        "error.too_many_images",
        "error.no_images",
        "error.edit_unsupported",
    }
    for key in keys:
        assert translator.tables["en"][key] and translator.tables["zh"][key]


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path):
    data = encode(photo(), "PNG")
    error = refusal(data, max_bytes=len(data) - 1)
    assert error.key == "error.upload_too_large"
    path = tmp_path / "big.png"
    path.write_bytes(data)
    error = refusal(str(path), max_bytes=1000)
    assert error.key == "error.upload_too_large" and error.params["max_mb"] == 0.0
    assert refusal(str(tmp_path), max_bytes=1000).key in ("error.upload_type", "error.upload_unreadable")


def test_a_picture_longer_than_the_model_reads_is_refused_naming_the_model():
    error = refusal(encode(photo(500, 100), "PNG"), max_aspect=4.0, model="GLM-Image")
    assert error.key == "error.aspect" and error.params["model"] == "GLM-Image"


def test_too_many_pictures_are_refused_and_nothing_is_stored(session):
    five = [encode(photo(), "PNG")] * 5
    with pytest.raises(InputError) as refused:
        intake_uploads(five, session, GLM_IMAGE, 20 * MB)
    assert refused.value.key == "error.too_many_images" and refused.value.params["max"] == 4
    assert stored_files(session) == []


def test_a_model_that_cannot_edit_refuses_uploads_naming_it(session):
    with pytest.raises(InputError) as refused:
        intake_uploads([encode(photo(), "PNG")], session, COGVIEW4, 20 * MB)
    assert refused.value.key == "error.edit_unsupported" and refused.value.params["model"] == "CogView4"


def test_when_one_picture_is_refused_the_pictures_before_it_are_not_kept(session):
    with pytest.raises(InputError):
        intake_uploads([encode(photo(), "PNG"), b"not a picture"], session, GLM_IMAGE, 20 * MB)
    assert [path for path in stored_files(session) if path.is_file()] == []


def frames(*colours: tuple[int, int, int]) -> list[Image.Image]:
    return [Image.new("RGB", (32, 24), colour) for colour in colours]


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_an_animated_picture_gives_its_first_frame(fmt):
    first, *rest = frames((255, 0, 0), (0, 0, 255))
    options = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(first, fmt, save_all=True, append_images=rest, duration=100, loop=0, **options)
    assert Image.open(io.BytesIO(data)).n_frames == 2  # really animated (APNG / animated WebP)
    image = read_upload(data, max_bytes=MB)
    assert image.mode == "RGB" and image.size == (32, 24)
    assert image.getpixel((5, 5)) == (255, 0, 0)


def test_a_phone_jpeg_with_a_second_picture_inside_mpo_gives_the_main_picture():
    first, *rest = frames((255, 0, 0), (0, 0, 255))
    data = encode(first, "MPO", save_all=True, append_images=rest)
    image = read_upload(data, max_bytes=MB)
    assert image.size == (32, 24) and image.getpixel((5, 5))[0] > 240 and image.getpixel((5, 5))[2] < 15


def test_a_cmyk_jpeg_comes_out_in_rgb_with_its_colours():
    cyan = Image.new("CMYK", (32, 32), (255, 0, 0, 0))
    image = read_upload(encode(cyan, "JPEG", quality=95), max_bytes=MB)
    red, green, blue = image.getpixel((16, 16))
    assert image.mode == "RGB" and red < 40 and green > 215 and blue > 215


def test_a_16_bit_grey_png_is_scaled_to_8_bits_not_clipped_to_white():
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (8, 1))
    source = Image.fromarray(ramp)
    assert source.mode == "I;16"
    image = read_upload(encode(source, "PNG"), max_bytes=MB)
    row = np.asarray(image)[0, :, 0]
    assert image.mode == "RGB" and row[0] == 0 and row[-1] == 255
    assert 120 <= row[32] <= 135  # mid grey stays mid grey (Pillow's own convert gives 255)


def test_transparent_pixels_of_rgba_and_palette_pictures_become_white():
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    rgba.paste((200, 0, 0, 255), (0, 0, 8, 16))
    image = read_upload(encode(rgba, "PNG"), max_bytes=MB)
    assert image.getpixel((2, 2)) == (200, 0, 0) and image.getpixel((12, 2)) == (255, 255, 255)

    palette = rgba.convert("P")
    palette.info["transparency"] = palette.getpixel((12, 2))
    image = read_upload(encode(palette, "PNG", transparency=palette.info["transparency"]), max_bytes=MB)
    assert image.getpixel((12, 2)) == (255, 255, 255)


def jpeg_with_gps_and_orientation() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was held upright, rotate 90° clockwise to view
    exif[0x010F] = "PhoneMaker"
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (48.0, 51.0, 29.0)  # GPSLatitudeRef, GPSLatitude
    gps[3], gps[4] = "E", (2.0, 17.0, 40.0)  # GPSLongitudeRef, GPSLongitude
    image = Image.new("RGB", (40, 20), (0, 128, 255))
    image.paste((255, 0, 0), (0, 0, 10, 20))  # the left edge red
    data = encode(image, "JPEG", exif=exif, quality=95)
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(0x8825)  # the GPS tags are really there
    return data


def test_exif_orientation_is_applied_then_every_tag_and_gps_position_is_gone(session):
    data = jpeg_with_gps_and_orientation()
    image = read_upload(data, max_bytes=MB)
    assert image.size == (20, 40)  # turned upright
    assert image.getpixel((10, 2))[0] > 200  # the red edge is now at the top
    assert image.info == {} and len(image.getexif()) == 0

    (picture,) = intake_uploads([data], session, GLM_IMAGE, 20 * MB)
    assert (picture.width, picture.height) == (20, 40)
    assert picture.path.parent == session.folder
    stored = picture.path.read_bytes()
    for marker in (b"Exif", b"GPS", b"PhoneMaker", b"eXIf", b"tEXt", b"iTXt", b"zTXt"):
        assert marker not in stored, marker
    with Image.open(picture.path) as reopened:
        assert len(reopened.getexif()) == 0 and "exif" not in reopened.info


def test_png_text_icc_and_xmp_do_not_survive_intake(session):
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "Jane Doe, 12 Secret Street")
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta>GPS 48.85N</x:xmpmeta>")
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = encode(photo(), "PNG", pnginfo=info, icc_profile=icc)
    (picture,) = intake_uploads([data], session, GLM_IMAGE, 20 * MB)
    stored = picture.path.read_bytes()
    for marker in (b"Jane Doe", b"xmpmeta", b"iCCP", b"tEXt", b"iTXt"):
        assert marker not in stored, marker
    with Image.open(picture.path) as reopened:
        assert reopened.info.keys() <= {"dpi"} and np.array_equal(np.asarray(reopened), np.asarray(photo()))


def test_the_stored_copies_go_with_the_session(session):
    pictures = intake_uploads([encode(photo(), "PNG"), encode(photo(), "JPEG")], session, GLM_IMAGE, 20 * MB)
    assert all(picture.path.is_file() for picture in pictures)
    session.dispose()
    assert not any(picture.path.exists() for picture in pictures) and not session.folder.exists()
