"""The handlers of "Read parameters", "Use these settings", "Download all" and "Variations" (glmimage.web.handlers)
called directly, without a browser, on the shared test server (tiny model). Pictures to read are uploaded through
the server's real upload route, as the page and gradio_client send them."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import gradio as gr
import httpx
import numpy as np
import pytest
from conftest import run_async
from PIL import Image, PngImagePlugin
from starlette.requests import Request

from glmimage.parameters import read_parameters as read_png
from glmimage.requests import GenerationRequest
from glmimage.sessions import HistoryEntry, Session, a1111_parameters, save_png
from glmimage.web import gradio_adapter as adapter
from glmimage.web import handlers

A1111_TEXT = (
    "a castle on a hill, <b>bold</b> *stars* | pipes\nNegative prompt: fog\n"
    "Steps: 30, Sampler: Euler a, CFG scale: 7, Seed: 4242, Size: 512x768, Model: sd_xl_base_1.0"
)


def visitor(language: str = "en-US", session_hash: str | None = None) -> gr.Request:
    """A request as a page event brings it: headers, a client address, and per-request state."""
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/gradio_api/queue/join",
        "headers": [(b"accept-language", language.encode())],
        "client": ("127.0.0.1", 50123),
        "query_string": b"",
    }
    return gr.Request(request=Request(scope), session_hash=session_hash)


def png_bytes(text: str | None) -> bytes:
    info = None
    if text is not None:
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", text)
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def upload(server, data: bytes, name: str = "picture.png") -> str:
    """Send a file to POST /gradio_api/upload, as the page's drop box does; returns the path Gradio wrote."""
    with httpx.Client(base_url=server.url, timeout=30) as http:
        response = http.post("/gradio_api/upload", files={"files": (name, data, "application/octet-stream")})
    response.raise_for_status()
    return response.json()[0]


@pytest.fixture(scope="module")
def ctx(server) -> handlers.Context:
    return server.app.context


# ---- reading parameters ----------------------------------------------------------------------------------------


def test_reading_an_uploaded_png_gives_its_parameters_and_deletes_the_file_and_gradios_notes_of_it(ctx, server):
    path = upload(server, png_bytes(A1111_TEXT), name="my-secret-project.png")
    assert Path(path).is_file() and adapter.is_gradio_upload(ctx.demo, path)

    shown = handlers.read_parameters(ctx, {"path": path, "orig_name": "my-secret-project.png"}, visitor())

    assert shown[ctx.page.read_result] == {
        "prompt": "a castle on a hill, <b>bold</b> *stars* | pipes",
        "negative_prompt": "fog",
        "seed": 4242,
        "width": 512,
        "height": 768,
        "num_inference_steps": 30,
        "guidance_scale": 7.0,
        "model": "sd_xl_base_1.0",
    }
    # Nothing of the file is kept: not the file, not the folder named after its content, not Gradio's note.
    assert not Path(path).exists() and not Path(path).parent.exists()
    assert not adapter.is_gradio_upload(ctx.demo, path)
    assert path not in ctx.page.read_file.temp_files


def test_a_path_that_was_not_uploaded_is_neither_read_nor_deleted(ctx, tmp_path):
    # Another visitor's generated image lies inside Gradio's temporary folder too: naming it must not work.
    someone_else = Session(ctx.files_root)
    picture = save_png(Image.new("RGB", (8, 8)), someone_else.new_file(), A1111_TEXT)
    outside = tmp_path / "outside.png"
    outside.write_bytes(png_bytes(A1111_TEXT))
    for path in (picture, outside):
        with pytest.raises(gr.Error, match="No picture arrived"):
            handlers.read_parameters(ctx, {"path": str(path)}, visitor())
        assert path.is_file()
    with pytest.raises(gr.Error, match="No picture arrived"):
        handlers.read_parameters(ctx, None, visitor())
    someone_else.dispose()


@pytest.mark.parametrize(
    "content, english, chinese",
    [
        (png_bytes(None), "carries no generation parameters", "没有生成参数"),
        (b"just some text, not a picture", "not a PNG picture", "不是 PNG"),
    ],
    ids=["png-without-parameters", "not-a-picture"],
)
def test_a_png_without_parameters_or_a_non_image_is_refused_in_the_visitors_language_and_deleted(
    ctx, server, content, english, chinese
):
    for language, words in (("en-US", english), ("zh-CN,zh;q=0.9", chinese)):
        path = upload(server, content, name="dropped.png")
        with pytest.raises(gr.Error) as refused:
            handlers.read_parameters(ctx, {"path": path}, visitor(language))
        assert words in refused.value.message
        assert not Path(path).exists() and not adapter.is_gradio_upload(ctx.demo, path)


def test_the_summary_shows_the_pictures_text_as_text_and_says_when_another_model_made_it(ctx):
    found = read_png(png_bytes(A1111_TEXT), ctx.styles).to_dict()
    shown = handlers.show_read_parameters(ctx, found, visitor())
    summary = shown[ctx.page.read_summary]
    # Markup and HTML from a picture are shown as characters, never rendered.
    assert r"&lt;b&gt;bold&lt;/b&gt; \*stars\* \| pipes" in summary and "<b>" not in summary
    assert "**Seed** 4242" in summary and "512×768" in summary and "**Steps** 30" in summary
    assert "Made with **sd\\_xl\\_base\\_1\\.0**; this server runs **tiny**" in summary
    assert shown[ctx.page.read_file] is None and shown[ctx.page.use_read].interactive is True
    empty = handlers.show_read_parameters(ctx, None, visitor())
    assert empty[ctx.page.read_summary] == "No picture read yet." and empty[ctx.page.use_read].interactive is False


def test_after_a_refused_picture_nothing_is_left_to_use(ctx):
    shown = handlers.forget_read_parameters(ctx, visitor("zh-CN"))
    assert shown[ctx.page.read_result] is None and shown[ctx.page.read_file] is None
    assert shown[ctx.page.read_summary] == "尚未读取图片。" and shown[ctx.page.use_read].interactive is False


# ---- use these settings -----------------------------------------------------------------------------------------


def test_use_these_settings_fills_the_controls_with_one_image_and_the_pictures_seed_fixed(ctx, tmp_path):
    request = GenerationRequest(
        prompt="一只橘猫 on a windowsill",
        negative_prompt="blurry",
        style="anime",
        width=864,
        height=1152,
        num_images=3,
        seed=5,
        randomize_seed=True,
        num_inference_steps=7,
        guidance_scale=4.5,
    )
    final = ctx.styles.apply(request.style, request.prompt, request.negative_prompt)
    text = a1111_parameters(final.prompt, final.negative_prompt, request, 987654321, "tiny")
    found = read_png(png_bytes(text), ctx.styles).to_dict()
    page = ctx.page

    shown = handlers.use_read_parameters(ctx, found, visitor())

    assert (shown[page.prompt], shown[page.negative_prompt], shown[page.style]) == (
        "一只橘猫 on a windowsill",
        "blurry",
        "anime",
    )
    assert (shown[page.width], shown[page.height], shown[page.size_preset]) == (864, 1152, "3:4 · 864×1152")
    assert (shown[page.seed], shown[page.randomize_seed], shown[page.num_images]) == (987654321, False, 1)
    assert (shown[page.steps], shown[page.guidance]) == (7, 4.5)


def test_use_these_settings_of_another_tools_picture_picks_no_style_and_leaves_unknown_values_alone(ctx):
    found = read_png(png_bytes("a red fox\nSteps: 20, Sampler: Euler, CFG scale: 6"), ctx.styles).to_dict()
    shown = handlers.use_read_parameters(ctx, found, visitor())
    page = ctx.page
    assert shown[page.prompt] == "a red fox" and shown[page.style] == "none"
    assert (shown[page.steps], shown[page.guidance]) == (20, 6.0)
    # The picture gives no seed and no size: those controls keep what the visitor has.
    assert not {page.seed, page.randomize_seed, page.width, page.height, page.size_preset} & shown.keys()
    assert handlers.use_read_parameters(ctx, None, visitor()) == gr.skip()


def test_use_these_settings_warns_about_a_value_this_server_does_not_allow(ctx):
    found = read_png(png_bytes(A1111_TEXT.replace("Steps: 30", "Steps: 150")), ctx.styles).to_dict()
    with pytest.warns(UserWarning, match=r"Steps must be from 1 to 100 \(got 150\)"):
        shown = handlers.use_read_parameters(ctx, found, visitor())
    assert shown[ctx.page.steps] == 150  # put in as it is: Generate refuses it at the field, never clamps it


# ---- download all -------------------------------------------------------------------------------------------------


def session_with_pictures(ctx: handlers.Context) -> Session:
    """Two history entries (one of two images), PNGs carrying their parameters as generation writes them."""
    session = Session(ctx.files_root)
    for number, (seed, count) in enumerate(((11, 2), (22, 1))):
        request = GenerationRequest(prompt=f"picture {number}", seed=seed, randomize_seed=False, num_images=count)
        text = a1111_parameters(request.prompt, "", request, seed, "tiny")
        files = [str(save_png(Image.new("RGB", (8, 8)), session.new_file(), text)) for _ in range(count)]
        entry = HistoryEntry(f"e{number}", 1_700_000_000.0 + number, files, request.to_dict(), seed, {})
        session.add_history(entry)
    return session


def test_download_all_zips_the_history_and_the_result_on_screen_each_once_with_their_parameters(ctx):
    session = session_with_pictures(ctx)
    newest = session.history[0].files
    kept_off = str(save_png(Image.new("RGB", (8, 8)), session.new_file(), None))  # on screen, not in the history
    other = Session(ctx.files_root)
    elsewhere = str(save_png(Image.new("RGB", (8, 8)), other.new_file(), None))
    on_screen = [(newest[0], None), (kept_off, None), (elsewhere, None)]

    shown = handlers.download_all(ctx, session, on_screen, visitor())

    archive = Path(shown[ctx.page.download_all_file])
    assert archive.parent == session.folder and archive.suffix == ".zip"
    with zipfile.ZipFile(archive) as opened:
        names = opened.namelist()
        texts = {name: Image.open(io.BytesIO(opened.read(name))).info.get("parameters") for name in names}
    # Oldest first; the other session's file is not packed, the one already in the history only once.
    assert [name.split("-seed")[-1] if "seed" in name else name for name in names] == [
        "11-1.png",
        "11-2.png",
        "22.png",
        "result-1.png",
    ]
    assert ["Seed: 11" in texts[n] for n in names[:2]] == [True, True] and "Seed: 22" in texts[names[2]]
    assert texts["result-1.png"] is None  # as generated: that one was made with embedding off
    assert session.log[-1]["event"] == "downloaded_all" and session.log[-1]["images"] == 4

    again = Path(handlers.download_all(ctx, session, on_screen, visitor())[ctx.page.download_all_file])
    assert again.is_file() and not (archive.exists() and archive != again)  # one zip at a time
    session.dispose()
    other.dispose()
    assert not again.exists()  # deleted with the session


def test_download_all_with_nothing_made_yet_gives_no_file(ctx):
    session = Session(ctx.files_root)
    assert handlers.download_all(ctx, session, [], visitor()) == {ctx.page.download_all_file: None}
    session.dispose()


# ---- variations ---------------------------------------------------------------------------------------------------

SETTINGS = dict(
    prompt="variation-canary a paper lantern",
    negative_prompt="",
    style="none",
    width=512,
    height=512,
    num_images=2,
    seed=0,
    randomize_seed=True,
    num_inference_steps=2,
    guidance_scale=3.5,
)


def pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_each_variation_has_its_own_seed_under_it_and_that_seed_alone_redraws_it(ctx):
    session, page = Session(ctx.files_root), ctx.page

    shown = run_async(handlers.variations(ctx, *SETTINGS.values(), session, visitor("en-US", "variations-test")))

    made = shown[page.details]["variations"]
    seeds = [one["seed"] for one in made]
    assert len(seeds) == 2 and seeds[0] != seeds[1]
    assert [caption for _, caption in shown[page.gallery]] == [f"Seed {seed}" for seed in seeds]
    # The history gets one entry per variation, each a one-image request with its seed fixed.
    assert [(e.seed, e.request["num_images"], e.request["randomize_seed"]) for e in reversed(session.history)] == [
        (seed, 1, False) for seed in seeds
    ]
    for (file, _), seed in zip(shown[page.gallery], seeds, strict=True):
        again = run_async(
            handlers.generate(
                ctx, *{**SETTINGS, "num_images": 1, "seed": seed, "randomize_seed": False}.values(), session, visitor()
            )
        )
        assert np.array_equal(pixels(again[page.gallery][0]), pixels(file))

    line = handlers.after_variations(ctx, session, shown[page.details], visitor())[page.timings]
    assert line.startswith(f"**Variations** 2 · **seeds** {seeds[0]}, {seeds[1]} · **total**")
    session.dispose()


def test_a_stop_during_the_second_variation_keeps_the_first(ctx):
    session, page = Session(ctx.files_root), ctx.page

    def stop_in_the_second(value: tuple[int, int], desc: str | None = None) -> None:
        if value[0] > SETTINGS["num_inference_steps"]:  # a step of the second variation
            handlers.request_stop(session)

    shown = run_async(handlers.variations(ctx, *SETTINGS.values(), session, visitor(), progress=stop_in_the_second))
    assert len(shown[page.gallery]) == 1 and len(session.history) == 1
    assert shown[page.details]["variations"][0]["seed"] == session.history[0].seed

    waiting = visitor()
    adapter.mark_request(waiting, handlers.ENQUEUED_AT, time.monotonic())  # as the validator marks a queued job
    handlers.request_stop(session)  # pressed while the variations still wait in the queue: none is made
    assert run_async(handlers.variations(ctx, *SETTINGS.values(), session, waiting)) == {page.session: session}
    assert len(session.history) == 1
    session.dispose()
