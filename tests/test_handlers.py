"""The page's handlers (glmimage.web.handlers) called directly, as plain functions: what a visitor sees change
after restoring a history entry, typing a size, picking a preset or a style, and what the status line says.
No browser; the handlers get the page and services of the shared test server (tiny model)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import gradio as gr
import pytest
from PIL import Image

from glmimage.errors import InputError, ModelNotReady, Refused
from glmimage.models.loading import PipelineLoader
from glmimage.sessions import HistoryEntry, Session, save_png
from glmimage.web import handlers
from glmimage.web.layout import CUSTOM_SIZE

TIMINGS = {"queue_s": 0.5, "load_wait_s": 0.0, "model_s": 1.25, "per_step_s": 0.625, "save_s": 0.01, "total_s": 1.8}
PARAMETERS = {
    "prompt": "restore-canary a paper boat",
    "negative_prompt": "blurry",
    "style": "anime",
    "width": 864,
    "height": 1152,
    "num_images": 2,
    "seed": 0,
    "randomize_seed": True,
    "num_inference_steps": 7,
    "guidance_scale": 4.5,
}


def english() -> gr.Request:
    return gr.Request(headers={"accept-language": "en-US,en;q=0.9"})


def chinese() -> gr.Request:
    return gr.Request(headers={"accept-language": "zh-CN,zh;q=0.9"})


@pytest.fixture(scope="module")
def ctx(server) -> handlers.Context:
    return server.app.context


def session_with_one_entry(ctx: handlers.Context) -> Session:
    session = Session(ctx.files_root)
    files = [str(save_png(Image.new("RGB", (8, 8), "red"), session.new_file(), None)) for _ in range(2)]
    session.add_history(
        HistoryEntry(
            id="e0",
            created=0.0,
            files=files,
            request=PARAMETERS,
            seed=424242,
            timings=TIMINGS,
        )
    )
    return session


def test_restoring_a_history_entry_fills_every_control_with_its_settings_and_shows_its_images_and_seed(ctx):
    session = session_with_one_entry(ctx)
    page = ctx.page

    shown = handlers.restore(ctx, session, gr.SelectData(None, {"index": 0, "value": None}), english())

    assert shown[page.prompt] == "restore-canary a paper boat" and shown[page.negative_prompt] == "blurry"
    assert (shown[page.style], shown[page.width], shown[page.height]) == ("anime", 864, 1152)
    assert (shown[page.num_images], shown[page.steps], shown[page.guidance]) == (2, 7, 4.5)
    # The seed it was drawn with, fixed, so Generate redraws the same picture.
    assert shown[page.seed] == 424242 and shown[page.randomize_seed] is False
    assert shown[page.size_preset] == "3:4 · 864×1152"
    assert shown[page.gallery] == session.history[0].files and shown[page.seed_used] == 424242
    assert "424242" in shown[page.timings] and "1.25" in shown[page.timings]
    session.dispose()


@pytest.mark.parametrize("index", [None, 1, -1])
def test_a_click_outside_the_history_changes_nothing(ctx, index):
    session = session_with_one_entry(ctx)
    assert handlers.restore(ctx, session, gr.SelectData(None, {"index": index, "value": None}), english()) == gr.skip()
    session.dispose()


def test_a_width_that_breaks_the_pixel_limit_lowers_the_height_to_the_largest_legal_side(ctx):
    page = ctx.page
    assert handlers.width_changed(ctx, 2048, 2048) == {page.height: 1024, page.size_preset: CUSTOM_SIZE}
    assert handlers.height_changed(ctx, 2048, 2048) == {page.width: 1024, page.size_preset: CUSTOM_SIZE}


def test_a_legal_size_leaves_the_other_side_as_typed_and_names_its_preset(ctx):
    page = ctx.page
    # The other side is not sent back: it would overwrite what the visitor is typing there.
    assert handlers.width_changed(ctx, 1152, 864) == {page.size_preset: "4:3 · 1152×864"}
    assert handlers.height_changed(ctx, 1000, 512) == {page.size_preset: CUSTOM_SIZE}


def test_a_half_typed_size_only_marks_the_size_as_custom(ctx):
    assert handlers.width_changed(ctx, None, 1024) == {ctx.page.size_preset: CUSTOM_SIZE}
    assert handlers.height_changed(ctx, 1024, "") == {ctx.page.size_preset: CUSTOM_SIZE}


def test_picking_a_preset_sets_both_sides_and_an_unknown_one_changes_nothing(ctx):
    assert handlers.pick_preset(ctx, "16:9 · 1536×864") == {ctx.page.width: 1536, ctx.page.height: 864}
    assert handlers.pick_preset(ctx, CUSTOM_SIZE) == gr.skip()


def test_the_preview_shows_the_prompts_with_the_style_applied(ctx):
    shown = handlers.preview(ctx, "a cat", "", "photographic")
    assert shown[ctx.page.final_prompt].startswith("professional photograph of a cat")
    assert "blurry" in shown[ctx.page.final_negative]
    assert handlers.preview(ctx, "a cat", "fog", "none") == {
        ctx.page.final_prompt: "a cat",
        ctx.page.final_negative: "fog",
    }
    assert handlers.preview(ctx, "a cat", "", "no-such-style") == gr.skip()


def test_the_status_line_says_ready_with_the_model_and_stops_polling(ctx):
    shown = handlers.show_status(ctx, english())
    assert shown[ctx.page.model_status].startswith("**Ready**: model **tiny** on cpu (float32).")
    assert "Test model" in shown[ctx.page.model_status]
    assert shown[ctx.page.status_timer].active is False


def test_the_status_line_says_loading_and_keeps_polling_while_the_model_loads(ctx):
    loading = dataclasses.replace(ctx, loader=PipelineLoader("tiny", warmup=False))  # never started
    shown = handlers.show_status(loading, chinese())
    assert "tiny" in shown[ctx.page.model_status] and "加载" in shown[ctx.page.model_status]
    assert shown[ctx.page.status_timer].active is True


def test_new_session_leaves_a_fresh_session_with_no_files_of_the_old_one(ctx):
    old = session_with_one_entry(ctx)
    files = [Path(f) for f in old.history[0].files]
    fresh = handlers.new_session(ctx, old, english())[ctx.page.session]
    assert not any(f.exists() for f in files) and fresh.history == [] and fresh.folder != old.folder
    fresh.dispose()


def test_errors_are_worded_in_the_visitors_language_with_the_field_name_translated(ctx):
    error = InputError("error.out_of_range", field="num_inference_steps", min=1, max=100, value=500)
    assert handlers.message(ctx.translator, error, "en") == "Steps must be from 1 to 100 (got 500)."
    assert "步数" in handlers.message(ctx.translator, error, "zh")
    refused = Refused("error.rate_limited", seconds=12, limit="3/minute")
    assert handlers.message(ctx.translator, refused, "en").endswith(
        "the limit is 3/minute per visitor. Please try again in 12 s."
    )
    not_ready = ModelNotReady("load.oom", detail="CUDA out of memory")
    assert handlers.message(ctx.translator, not_ready, "en") == (
        "The model is not available: not enough memory to load the model: try --offload model or --quantize int8."
    )


@pytest.mark.parametrize(
    "error, field",
    [
        (InputError("error.not_text", field="negative_prompt"), "negative_prompt"),
        (InputError("error.side_multiple", width=500, height=512, multiple=32), "width"),
        (InputError("error.unknown_style", style="x"), "style"),
        (Refused("error.too_many_jobs", max=2), "prompt"),
    ],
)
def test_a_refusal_is_shown_on_the_field_at_fault(error, field):
    assert handlers.field_at_fault(error) == field


@pytest.mark.parametrize(
    "host, key",
    [
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("2001:DB8:0::1", "2001:db8::1"),
        ("testclient", "testclient"),
        (None, "unknown"),
    ],
)
def test_one_visitor_has_one_address_key_however_the_address_is_written(host, key):
    assert handlers.canonical_address(host) == key
