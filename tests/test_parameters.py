"""Reading parameters back from pictures: GLM Image's own PNGs, AUTOMATIC1111's and Fooocus' (A1111 scheme), and
files that are no such thing."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from glmimage.errors import InputError
from glmimage.parameters import MAX_PARAMETERS_FILE_BYTES, parse_a1111, read_parameters
from glmimage.requests import GenerationRequest
from glmimage.sessions import a1111_parameters, save_png


def png_with(text: str | None, key: str = "parameters", size: tuple[int, int] = (8, 8)) -> bytes:
    info = None
    if text is not None:
        info = PngImagePlugin.PngInfo()
        info.add_text(key, text)
    out = io.BytesIO()
    Image.new("RGB", size, "white").save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def glm_png(tmp_path: Path, styles, request: GenerationRequest, seed: int, model: str = "tiny") -> Path:
    final = styles.apply(request.style, request.prompt, request.negative_prompt)
    text = a1111_parameters(final.prompt, final.negative_prompt, request, seed, model)
    return save_png(Image.new("RGB", (8, 8)), tmp_path / "made-by-glm-image.png", text)


@pytest.mark.parametrize("style", ["none", "cinematic", "chinese_ink"])
def test_a_glm_image_png_gives_back_the_request_as_typed_for_every_kind_of_style(tmp_path, styles, style):
    assert style in styles
    request = GenerationRequest(
        prompt="一只橘猫, sitting on a windowsill {braces}",
        negative_prompt="blurry, low quality",
        style=style,
        width=768,
        height=1344,
        num_images=2,
        seed=7,
        randomize_seed=True,
        num_inference_steps=37,
        guidance_scale=4.25,
    )
    read = read_parameters(glm_png(tmp_path, styles, request, seed=123456789), styles)
    assert read.to_dict() == {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "seed": 123456789,
        "width": 768,
        "height": 1344,
        "num_inference_steps": 37,
        "guidance_scale": 4.25,
        "model": "tiny",
        "style": style,
    }
    # The typed prompt with its style gives the model exactly the text it received before.
    assert styles.apply(read.style, read.prompt, read.negative_prompt) == styles.apply(
        style, request.prompt, request.negative_prompt
    )


def test_a_glm_image_png_with_an_empty_negative_prompt_reads_back_empty(tmp_path, styles):
    request = GenerationRequest(prompt="a lighthouse", style="cinematic", seed=1, randomize_seed=False)
    read = read_parameters(glm_png(tmp_path, styles, request, seed=1), styles)
    assert (read.prompt, read.negative_prompt, read.style) == ("a lighthouse", "", "cinematic")


def test_a_multi_line_automatic1111_png_is_read_as_a1111_reads_it(styles):
    text = (
        "masterpiece, a castle on a hill,\nsunset lighting\n"
        "Negative prompt: lowres, bad anatomy,\nextra fingers\n"
        "Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 3141592653, Size: 512x768, Model hash: 6ce0161689, "
        'Model: v1-5-pruned-emaonly, Lora hashes: "detail: abc123, style: def456", Version: v1.10.1'
    )
    read = read_parameters(png_with(text), styles)
    assert read.to_dict() == {
        "prompt": "masterpiece, a castle on a hill,\nsunset lighting",
        "negative_prompt": "lowres, bad anatomy,\nextra fingers",
        "seed": 3141592653,
        "width": 512,
        "height": 768,
        "num_inference_steps": 28,
        "guidance_scale": 7.0,
        "model": "v1-5-pruned-emaonly",
    }


def test_a_fooocus_png_in_its_a1111_scheme_is_read_with_its_quoted_values(styles):
    # What Fooocus 2.5 writes with "Metadata Scheme: a1111" (modules/meta_parser.py A1111MetadataParser).
    text = (
        "a cozy cabin in the snow, warm light, highly detailed\n"
        "Negative prompt: unrealistic, saturated, high contrast\n"
        "Steps: 30, Sampler: dpmpp_2m_sde_gpu, Seed: 8412345, Size: 1152x896, CFG scale: 4, Sharpness: 2, "
        'ADM Guidance: "(1.5, 0.8, 0.3)", Model: juggernautXL_v8Rundiffusion, Model hash: aeb7e9e689, '
        "Performance: Speed, Scheduler: karras, VAE: Default (model), Raw prompt: a cozy cabin, "
        "Styles: \"['Fooocus V2', 'Fooocus Enhance']\", Version: Fooocus v2.5.5"
    )
    read = read_parameters(png_with(text), styles)
    assert (read.prompt, read.negative_prompt) == (
        "a cozy cabin in the snow, warm light, highly detailed",
        "unrealistic, saturated, high contrast",
    )
    assert (read.seed, read.width, read.height, read.num_inference_steps, read.guidance_scale) == (
        8412345,
        1152,
        896,
        30,
        4.0,
    )
    assert read.model == "juggernautXL_v8Rundiffusion"
    assert read.style is None  # Fooocus' styles are not ours: not offered as one


def test_a_prompt_without_a_parameters_line_is_all_prompt(styles):
    read = parse_a1111("just a prompt, nothing else", styles)
    assert read.prompt == "just a prompt, nothing else"
    assert (read.seed, read.width, read.num_inference_steps, read.guidance_scale, read.model) == (None,) * 5


def test_a_style_we_do_not_have_is_not_offered(styles):
    read = parse_a1111("a cat\nSteps: 2, CFG scale: 3.5, Seed: 1, Size: 512x512, Style: no-such-style", styles)
    assert read.style is None and read.prompt == "a cat"


def test_a_styled_prompt_edited_by_hand_is_kept_as_written_without_the_style(styles):
    read = parse_a1111("my own words\nSteps: 2, CFG scale: 3.5, Seed: 1, Size: 512x512, Style: cinematic", styles)
    assert read.style is None and read.prompt == "my own words"


def test_a_png_without_parameters_is_refused_clearly(styles):
    with pytest.raises(InputError) as caught:
        read_parameters(png_with(None), styles)
    assert caught.value.key == "error.params_none"
    with pytest.raises(InputError) as caught:
        read_parameters(png_with("a title", key="Title"), styles)
    assert caught.value.key == "error.params_none"


@pytest.mark.parametrize(
    "content",
    [b"hello, I am a text file", b"", b"\xff\xd8\xff\xe0" + b"\x00" * 100, b"GIF89a" + b"\x00" * 50],
    ids=["text", "empty", "jpeg-header", "gif-header"],
)
def test_a_file_that_is_not_a_png_is_refused_clearly(styles, content):
    with pytest.raises(InputError) as caught:
        read_parameters(content, styles)
    assert caught.value.key == "error.params_not_png"


def test_a_truncated_png_is_refused_clearly(styles):
    whole = png_with("a cat\nSteps: 2, CFG scale: 3.5, Seed: 1, Size: 512x512")
    with pytest.raises(InputError) as caught:
        read_parameters(whole[:20], styles)
    assert caught.value.key == "error.params_unreadable"


def test_a_decompression_bomb_header_is_refused_without_decoding(styles):
    # A 30000x30000 PNG header, no pixel data: reading it must not allocate the picture.
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    with pytest.raises(InputError) as caught:
        read_parameters(bomb, styles)
    assert caught.value.key == "error.params_unreadable"


def test_a_compressed_text_bomb_is_refused(styles):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "x" * (40 * 2**20), zip=True)  # 40 MB of text, a few KB compressed
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="PNG", pnginfo=info)
    assert len(out.getvalue()) < 200_000
    with pytest.raises(InputError) as caught:
        read_parameters(out.getvalue(), styles)
    assert caught.value.key == "error.params_unreadable"


def test_a_file_over_the_size_limit_is_refused_before_it_is_parsed(tmp_path, styles):
    big = tmp_path / "big.png"
    big.write_bytes(
        png_with("a cat\nSteps: 2, CFG scale: 3.5, Seed: 1, Size: 512x512") + b"\0" * MAX_PARAMETERS_FILE_BYTES
    )
    with pytest.raises(InputError) as caught:
        read_parameters(big, styles)
    assert caught.value.key == "error.params_too_large"
