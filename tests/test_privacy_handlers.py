"""Privacy promises checked one level below the page: the handlers of Clear history, New session, the two privacy
checkboxes and the privacy notice (glmimage.web.handlers) called directly, and the session and service code they use.

These events are ``api_visibility="private"``, so gradio_client cannot reach them; test_privacy_server.py drives
the same events through the server the way the browser does.
"""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr
import pytest
from PIL import Image

from glmimage import limits
from glmimage.config import Settings, load_settings
from glmimage.requests import GenerationRequest
from glmimage.service import GenerationService
from glmimage.sessions import PROMPT_FIELDS, FileSweeper, HistoryEntry, Session, a1111_parameters, save_png
from glmimage.web import handlers

PROMPT = "handler-canary a lighthouse at dusk"
NEGATIVE = "handler-canary-negative blurry"
REQUEST = GenerationRequest(
    prompt=PROMPT,
    negative_prompt=NEGATIVE,
    style="none",
    width=512,
    height=512,
    num_images=1,
    seed=11,
    randomize_seed=False,
    num_inference_steps=2,
    guidance_scale=3.5,
)
CONTROL_TYPES = (gr.Textbox, gr.Number, gr.Slider, gr.Dropdown, gr.Checkbox)


def english() -> gr.Request:
    return gr.Request(headers={"accept-language": "en-US,en;q=0.9"})


def chinese() -> gr.Request:
    return gr.Request(headers={"accept-language": "zh-CN,zh;q=0.9"})


def session_with_history(files_root: Path, entries: int = 2) -> Session:
    """A session as generation leaves it: PNG files in its folder, history entries and log lines naming the prompt."""
    session = Session(str(files_root))
    for n in range(entries):
        path = save_png(Image.new("RGB", (8, 8), "blue"), session.new_file(), None)
        session.add_history(
            HistoryEntry(
                id=f"e{n}",
                created=0.0 + n,
                files=[str(path)],
                request=REQUEST.to_dict(),
                seed=11,
                timings={"model_s": 0.1},
            )
        )
        session.record("generated", **REQUEST.to_dict(), timings={"model_s": 0.1})
    return session


@pytest.fixture(scope="module")
def demo(server) -> gr.Blocks:
    return server.app.demo


@pytest.fixture(scope="module")
def ctx(server) -> handlers.Context:
    """The page's handler context: its components and the services behind them."""
    return server.app.context


@pytest.fixture
def files_root(server) -> Path:
    return Path(server.app.files_root)


def test_clear_history_empties_history_deletes_every_file_and_logs_how_many_went(ctx, files_root):
    session = session_with_history(files_root)
    pngs = [Path(f) for entry in session.history for f in entry.files]
    assert all(p.exists() for p in pngs)

    out = handlers.clear_history(ctx, session, english())
    page = ctx.page
    returned, gallery, empty_note, log = (
        out[page.session],
        out[page.history],
        out[page.history_empty],
        out[page.session_log],
    )

    assert returned is session and session.history == [] and gallery["value"] == []
    assert gallery["visible"] is False and empty_note["visible"] is True
    assert not any(p.exists() for p in pngs)
    assert list(session.folder.glob("*.png")) == []
    assert [e["event"] for e in log] == ["generated", "generated", "history_cleared"]
    assert log[-1]["entries"] == 2


def test_the_downloadable_log_is_this_sessions_log_as_json_inside_its_folder(ctx, files_root):
    session = session_with_history(files_root, entries=1)
    other = session_with_history(files_root, entries=1)
    other.record("refused", prompt="other-visitor-canary")

    download = handlers.clear_history(ctx, session, english())[ctx.page.log_download]

    log_file = Path(download.value["path"])
    assert log_file.parent == session.folder  # so dispose (tab closed, TTL, New session) deletes it
    data = json.loads(log_file.read_text(encoding="utf-8"))
    assert data["events"] == session.log and "session_started" in data
    assert "other-visitor-canary" not in log_file.read_text(encoding="utf-8")
    assert len(list(session.folder.glob("*.json"))) == 1  # each update replaces the previous file


def test_new_session_deletes_the_old_sessions_files_history_and_log(ctx, files_root):
    old = session_with_history(files_root)
    old_folder = old.folder

    fresh = handlers.new_session(ctx, old, english())[ctx.page.session]

    assert not old_folder.exists()
    assert old.history == [] and old.log == []
    assert fresh is not old and fresh.folder != old_folder
    assert fresh.history == [] and [e["event"] for e in fresh.log] == ["new_session"]
    assert fresh.keep_history and fresh.embed_metadata


def test_new_session_puts_every_control_of_the_page_back_to_its_default(ctx, demo, files_root):
    values = handlers.new_session(ctx, session_with_history(files_root), english())
    controls = [block for block in demo.blocks.values() if isinstance(block, CONTROL_TYPES)]
    assert len(controls) >= 14
    for control in controls:
        assert control in values, f"New session leaves {control.elem_id or control} as it was"
        default = "" if isinstance(control, gr.Textbox) and control.value is None else control.value
        assert values[control] == default, control.elem_id
    by_id = {block.elem_id: value for block, value in values.items() if block.elem_id}
    assert by_id["result"] == [] and by_id["history"]["value"] == [] and by_id["seed-used"] is None
    assert by_id["details"] is None and by_id["session-log"] == [{**by_id["session-log"][0], "event": "new_session"}]


def test_turning_keep_history_off_deletes_the_history_and_the_prompt_text_of_earlier_log_lines(ctx, files_root):
    session = session_with_history(files_root)
    pngs = [Path(f) for entry in session.history for f in entry.files]

    out = handlers.set_keep_history(ctx, session, False, english())
    returned, gallery, log = out[ctx.page.session], out[ctx.page.history], out[ctx.page.session_log]

    assert returned.keep_history is False and session.history == [] and gallery["value"] == []
    assert not any(p.exists() for p in pngs)
    assert [e["event"] for e in log] == ["generated", "generated", "setting_changed"]
    assert "handler-canary" not in json.dumps(log) and "handler-canary" not in session.log_json()
    assert log[0]["width"] == 512 and log[0]["timings"] == {"model_s": 0.1}  # the rest of each line stays


def test_the_embed_metadata_checkbox_sets_the_sessions_choice_and_logs_it(ctx, files_root):
    session = Session(str(files_root))
    handlers.set_embed_metadata(ctx, session, False)
    assert session.embed_metadata is False
    handlers.set_embed_metadata(ctx, session, True)
    assert session.embed_metadata is True
    assert [(e["event"], e["embed_metadata"]) for e in session.log] == [
        ("setting_changed", False),
        ("setting_changed", True),
    ]


def test_with_keep_history_off_the_log_keeps_events_and_parameters_but_no_prompt_text(files_root):
    session = Session(str(files_root), keep_history=False)
    session.record("refused", reason="error.out_of_range", **REQUEST.to_dict())
    assert not set(PROMPT_FIELDS) & set(session.log[0])
    assert session.log[0]["reason"] == "error.out_of_range" and session.log[0]["seed"] == 11


@pytest.fixture(scope="module")
def service(server, styles) -> GenerationService:
    """The service the page uses, on the server's engine (real tiny model)."""
    return GenerationService(server.settings, server.app.engine, styles, lambda: "tiny")


def test_a_generation_with_history_off_keeps_only_the_result_on_screen(service, files_root):
    session = Session(str(files_root), keep_history=False)
    first = service.run(REQUEST, session, queue_s=0.0)
    second = service.run(REQUEST, session, queue_s=0.0)

    assert session.history == []
    assert not any(Path(f).exists() for f in first.files)  # the previous result went when the next one came
    assert all(Path(f).exists() for f in second.files)  # the result on screen stays until then
    assert [e["event"] for e in session.log] == ["generated", "generated"]
    assert "handler-canary" not in session.log_json()


def test_generated_pngs_carry_the_a1111_parameters_only_while_embedding_is_on(service, files_root):
    session = Session(str(files_root))
    with_metadata = service.run(REQUEST, session, queue_s=0.0)
    session.embed_metadata = False
    without = service.run(REQUEST, session, queue_s=0.0)

    text = Image.open(with_metadata.files[0]).text
    assert text == {"parameters": a1111_parameters(PROMPT, NEGATIVE, REQUEST, with_metadata.seed, "tiny")}
    assert Image.open(without.files[0]).text == {}
    assert "parameters" not in Image.open(without.files[0]).info


def test_the_privacy_notice_states_the_time_limits_in_english_and_chinese(ctx, server):
    english_notice = handlers.show_status(ctx, english())[ctx.page.privacy_notice]
    chinese_notice = handlers.show_status(ctx, chinese())[ctx.page.privacy_notice]
    minutes = (str(round(server.settings.session_ttl / 60)), str(round(server.settings.file_ttl / 60)))
    for notice in (english_notice, chinese_notice):
        assert all(m in notice for m in minutes)
    assert "does not record your prompts" in english_notice and "cookies" in english_notice
    assert "不记录你的提示词" in chinese_notice and "Cookie" in chinese_notice
    assert "outside text service" not in english_notice  # no enhancer configured: nothing leaves the server


def test_the_privacy_notice_says_so_when_prompts_are_logged_or_sent_to_an_enhancer(monkeypatch):
    from glmimage.web.server import create_app

    monkeypatch.setenv("GLMIMAGE_ENHANCER_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("GLMIMAGE_ENHANCER_MODEL", "glm-4")
    app = create_app(Settings(model="tiny", warmup=False, log_prompts=True, session_ttl=600, file_ttl=1800))
    app.loader.wait(120)
    english_notice = handlers.show_status(app.context, english())[app.context.page.privacy_notice]
    chinese_notice = handlers.show_status(app.context, chinese())[app.context.page.privacy_notice]
    assert "your prompts are written to the server's log" in english_notice
    assert "does not record" not in english_notice
    assert "10 minutes" in english_notice and "30 minutes" in english_notice
    assert "outside text service" in english_notice
    assert "提示词会写入服务器日志" in chinese_notice and "外部文本服务" in chinese_notice


def test_by_default_files_live_two_hours_sessions_one_hour_and_prompts_are_not_logged():
    settings = load_settings([], environ={})
    assert settings.log_prompts is False
    # Longer than a visit, well under a day; a session never outlives the files its history shows.
    assert 3600 <= settings.session_ttl <= settings.file_ttl <= 6 * 3600
    flags = load_settings(["--file-ttl", "600", "--session-ttl", "300", "--log-prompts"], environ={})
    assert (flags.file_ttl, flags.session_ttl, flags.log_prompts) == (600, 300, True)


@pytest.mark.parametrize("ttl, interval", [(2, 1.0), (4, 1.0), (40, 10.0), (7200, 60.0)])
def test_the_file_sweep_runs_every_quarter_ttl_between_one_second_and_a_minute(tmp_path, ttl, interval):
    assert FileSweeper(tmp_path, ttl).interval_s == interval


def test_history_is_capped_so_a_long_visit_keeps_a_bounded_amount(files_root):
    session = session_with_history(files_root, entries=limits.MAX_HISTORY_ENTRIES + 2)
    assert len(session.history) == limits.MAX_HISTORY_ENTRIES
    assert len(list(session.folder.glob("*.png"))) == limits.MAX_HISTORY_ENTRIES
    session.dispose()
