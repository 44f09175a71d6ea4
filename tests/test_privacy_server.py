"""Privacy promises through the running server (tiny model): what one session can see and change, what Clear
history and New session delete, what the PNGs carry, what the session log holds, and what is never written.

``/generate`` is called with gradio_client. The private events (Clear history, New session, the privacy
checkboxes, page load) cannot be called by gradio_client; ``Page`` triggers them as the browser's front end does:
it joins the queue with the event's index from the page config and the visitor's session hash.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import request_kwargs
from gradio_client.exceptions import ValidationError
from PIL import Image

from glmimage.sessions import Session, a1111_parameters
from glmimage.web.gradio_adapter import session_values

A_PROMPT = "alpha-canary a red fox in snow"
B_PROMPT = "bravo-canary a blue whale at night"


class Page:
    """One visitor's page, driving events the way the browser does (``POST /gradio_api/queue/join``)."""

    def __init__(self, url: str, session_hash: str, language: str = "en-US") -> None:
        self.url = url.rstrip("/")
        self.session_hash = session_hash
        self.headers = {"accept-language": language}
        self.config = httpx.get(f"{self.url}/config", timeout=30).json()
        self.elem_of = {c["id"]: c["props"].get("elem_id") for c in self.config["components"]}
        self.id_of = {elem: cid for cid, elem in self.elem_of.items() if elem}

    def trigger(self, elem_id: str | None, event: str, **inputs: Any) -> dict[str, Any]:
        """Fire ``event`` on the component with ``elem_id`` (None: the page, for "load"); inputs by elem id (the
        State is sent as null, as the browser does). Returns the outputs by elem id."""
        target = self.id_of[elem_id] if elem_id else None
        dep = next(
            d
            for d in self.config["dependencies"]
            if d["backend_fn"] and any(e == event and (target is None or t == target) for t, e in d["targets"])
        )
        data = [inputs.get(self.elem_of.get(cid) or "", None) for cid in dep["inputs"]]
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=60) as http:
            joined = http.post(
                "/gradio_api/queue/join",
                json={
                    "data": data,
                    "fn_index": dep["id"],
                    "session_hash": self.session_hash,
                    "event_data": None,
                    "trigger_id": target,
                },
            )
            joined.raise_for_status()
            event_id = joined.json()["event_id"]
            with http.stream("GET", "/gradio_api/queue/data", params={"session_hash": self.session_hash}) as stream:
                for line in stream.iter_lines():
                    message = json.loads(line[5:]) if line.startswith("data:") else {}
                    if message.get("msg") == "process_completed" and message.get("event_id") == event_id:
                        assert message["success"], message
                        outputs = [shown(value) for value in message["output"]["data"]]
                        return {
                            self.elem_of.get(cid) or f"#{cid}": value
                            for cid, value in zip(dep["outputs"], outputs, strict=True)
                        }
        raise AssertionError(f"{elem_id} {event}: no result")


def shown(value: Any) -> Any:
    """What the page shows for an output: the value inside an update (which may also change visibility)."""
    if isinstance(value, dict) and value.get("__type__") == "update" and "value" in value:
        return value["value"]
    return value


def session_of(server, client) -> Session:
    return next(value for value in session_values(server.app.demo, client.session_hash) if isinstance(value, Session))


def generate(client, **overrides) -> tuple:
    """One fast generation (one step: these tests look at what is kept, not at the pictures)."""
    return client.predict(**request_kwargs(**{"num_inference_steps": 1, **overrides}), api_name="/generate")


def path_of(file_data: dict[str, Any]) -> Path:
    return Path(file_data["path"])


def inside(path: Path, folder: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


@pytest.fixture
def client_a(server):
    return server.client(download_files=False)


@pytest.fixture
def client_b(server):
    return server.client(download_files=False)


def test_one_sessions_history_and_log_never_show_another_sessions_prompts(server, client_a, client_b):
    generate(client_a, prompt=A_PROMPT)
    generate(client_b, prompt=B_PROMPT)
    generate(client_a, prompt=A_PROMPT, seed=99)

    for client, own, other in ((client_a, "alpha-canary", "bravo-canary"), (client_b, "bravo-canary", "alpha-canary")):
        # Any privacy event answers with the page's history gallery and session log; this one changes nothing.
        shown = Page(server.url, client.session_hash).trigger("embed-metadata", "input", **{"embed-metadata": True})
        captions = [item["caption"] for item in shown["history"]]
        assert captions and all(own in c for c in captions) and not any(other in c for c in captions)
        log_text = json.dumps(shown["session-log"], ensure_ascii=False)
        assert own in log_text and other not in log_text
        log_file = httpx.get(shown["download-log"]["url"], timeout=30)
        assert log_file.status_code == 200 and own in log_file.text and other not in log_file.text
    a, b = session_of(server, client_a), session_of(server, client_b)
    assert a.id != b.id and a.folder != b.folder
    assert [len(a.history), len(b.history)] == [2, 1]


def test_clear_history_deletes_this_sessions_entries_and_files_and_leaves_the_other_session_intact(
    server, client_a, client_b
):
    a_result, *_ = generate(client_a, prompt=A_PROMPT)
    b_result, *_ = generate(client_b, prompt=B_PROMPT)
    a_png, b_png = path_of(a_result[0]["image"]), path_of(b_result[0]["image"])
    assert a_png.exists() and b_png.exists()

    shown = Page(server.url, client_a.session_hash).trigger("clear-history", "click")

    assert shown["history"] == []
    assert [e["event"] for e in shown["session-log"]] == ["generated", "history_cleared"]
    assert session_of(server, client_a).history == [] and not a_png.exists()
    assert list(session_of(server, client_a).folder.glob("*.png")) == []
    assert b_png.exists() and [e.request["prompt"] for e in session_of(server, client_b).history] == [B_PROMPT]
    # The cleared session goes on working.
    again, *_ = generate(client_a, prompt=A_PROMPT, seed=5)
    assert path_of(again[0]["image"]).exists() and len(session_of(server, client_a).history) == 1


def test_new_session_empties_history_and_log_deletes_the_files_and_resets_every_control(server, client_a):
    result, *_ = generate(client_a, prompt=A_PROMPT)
    old = session_of(server, client_a)
    page = Page(server.url, client_a.session_hash)

    shown = page.trigger("new-session", "click")

    assert not old.folder.exists() and old.history == [] and old.log == []
    fresh = session_of(server, client_a)
    assert fresh.id != old.id and fresh.history == []
    assert shown["history"] == [] and [e["event"] for e in shown["session-log"]] == ["new_session"]
    # Every control's default as the page config gives it (an empty textbox is null there, "" once set).
    defaults = {
        c["props"]["elem_id"]: ""
        if c["type"] == "textbox" and c["props"].get("value") is None
        else c["props"].get("value")
        for c in page.config["components"]
        if c["type"] in ("textbox", "number", "slider", "dropdown", "checkbox") and c["props"].get("elem_id")
    }
    assert len(defaults) >= 14
    for elem_id, default in defaults.items():
        assert elem_id in shown, f"New session leaves {elem_id} as it was"
        assert shown[elem_id] == default, elem_id
    assert shown["prompt"] == "" and shown["result"] == [] and shown["details"] is None
    # Gradio's own record of this session's last inputs and outputs no longer holds the prompt either.
    record = server.app.demo.state_holder.session_data[client_a.session_hash].config_values
    assert "alpha-canary" not in json.dumps(record, default=str, ensure_ascii=False)
    again, *_ = generate(client_a, prompt=A_PROMPT)
    assert path_of(again[0]["image"]).parent == fresh.folder


def test_history_files_and_the_downloadable_log_live_in_the_sessions_own_folder(server, client_a):
    result, *_ = generate(client_a, prompt=A_PROMPT, num_images=2)
    session = session_of(server, client_a)
    shown = Page(server.url, client_a.session_hash).trigger("embed-metadata", "input", **{"embed-metadata": True})

    served = [path_of(item["image"]) for item in result] + [path_of(item["image"]) for item in shown["history"]]
    served.append(path_of(shown["download-log"]))
    assert all(p.parent == session.folder for p in served), served
    assert {p.name for p in session.folder.iterdir()} == {p.name for p in served}


def test_the_session_log_json_has_one_entry_per_event_in_order_with_parameters_and_timings(server, client_a):
    generate(client_a, prompt=A_PROMPT)
    with pytest.raises(ValidationError):
        generate(client_a, prompt=A_PROMPT, width=100)
    generate(client_a, prompt=A_PROMPT, seed=77)
    shown = Page(server.url, client_a.session_hash).trigger("clear-history", "click")

    data = httpx.get(shown["download-log"]["url"], timeout=30).json()
    events = data["events"]
    assert [e["event"] for e in events] == ["generated", "refused", "generated", "history_cleared"]
    assert [e["time"] for e in events] == sorted(e["time"] for e in events)
    assert all(time.strptime(e["time"], "%Y-%m-%dT%H:%M:%S") for e in events)
    first, refused, second, cleared = events
    for entry, seed in ((first, 1234), (second, 77)):
        assert entry["prompt"] == A_PROMPT and entry["width"] == 512 and entry["num_inference_steps"] == 1
        assert entry["seed_used"] == seed and entry["images"] == 1
        assert set(entry["timings"]) >= {"queue_s", "model_s", "total_s"} and entry["timings"]["model_s"] > 0
    assert refused["reason"] == "error.out_of_range" and refused["width"] == 100
    assert cleared["entries"] == 2
    assert data["session_started"] <= first["time"]


def test_downloaded_pngs_carry_the_prompt_and_parameters_only_while_embedding_is_on(server, styles):
    client = server.client()  # downloads the PNGs as a browser would
    prompt, negative = "一只猫 canary-png in the rain", "模糊 blurry"
    result, seed, details = generate(client, prompt=prompt, negative_prompt=negative, seed=42)
    request = session_of(server, client).history[0]
    text = Image.open(result[0]["image"]).text

    from glmimage.requests import GenerationRequest

    expected = a1111_parameters(
        details["final_prompt"],
        details["final_negative_prompt"],
        GenerationRequest(**request.request),
        seed,
        details["model"],
    )
    assert text == {"parameters": expected}
    assert expected.splitlines()[0] == prompt and f"Negative prompt: {negative}" in expected
    assert "Steps: 1, Sampler: FlowMatchEuler, CFG scale: 3.5, Seed: 42, Size: 512x512" in expected

    Page(server.url, client.session_hash).trigger("embed-metadata", "input", **{"embed-metadata": False})
    result, *_ = generate(client, prompt=prompt, negative_prompt=negative)
    image = Image.open(result[0]["image"])
    assert image.text == {} and "parameters" not in image.info
    assert prompt.encode() not in Path(result[0]["image"]).read_bytes()


def test_with_keep_history_off_only_the_result_on_screen_is_kept_and_the_log_has_no_prompt(server, client_a):
    generate(client_a, prompt=A_PROMPT)
    page = Page(server.url, client_a.session_hash)
    shown = page.trigger("keep-history", "input", **{"keep-history": False})
    assert shown["history"] == [] and "alpha-canary" not in json.dumps(shown["session-log"])

    first, *_ = generate(client_a, prompt=A_PROMPT, seed=1)
    second, *_ = generate(client_a, prompt=A_PROMPT, seed=2)

    session = session_of(server, client_a)
    assert session.history == []
    assert not path_of(first[0]["image"]).exists()
    assert httpx.get(second[0]["image"]["url"], timeout=30).status_code == 200  # still shown
    assert "alpha-canary" not in session.log_json()
    assert [e["event"] for e in session.log][-2:] == ["generated", "generated"]

    page.trigger("keep-history", "input", **{"keep-history": True})
    generate(client_a, prompt=A_PROMPT, seed=3)
    assert [e.request["seed"] for e in session_of(server, client_a).history] == [3]


def test_a_closed_tab_drops_the_sessions_history_and_files_at_once(server, client_a):
    result, *_ = generate(client_a, prompt=A_PROMPT)
    session = session_of(server, client_a)
    holder = server.app.demo.state_holder
    # The browser holds this stream open while the tab lives; closing the tab ends it and Gradio runs unload.
    with httpx.stream("GET", f"{server.url}gradio_api/heartbeat/{client_a.session_hash}", timeout=30) as beat:
        next(beat.iter_lines())
    deadline = time.monotonic() + 10
    while (client_a.session_hash in holder.session_data or session.log) and time.monotonic() < deadline:
        time.sleep(0.05)

    assert client_a.session_hash not in holder.session_data  # Gradio's copy of the inputs and outputs too
    assert not session.folder.exists() and not path_of(result[0]["image"]).exists()
    assert session.history == [] and session.log == []


def test_deep_links_write_nothing_and_reveal_no_session(server, client_a):
    generate(client_a, prompt=A_PROMPT)
    answer = httpx.get(f"{server.url}gradio_api/deep_link", params={"session_hash": client_a.session_hash})
    assert answer.status_code == 200 and answer.json() == ""
    assert not (Path(os.environ["GRADIO_TEMP_DIR"]) / "deep_links").exists()


def test_the_page_sets_no_cookies_and_keeps_nothing_in_the_browser(server, client_a):
    result, *_ = generate(client_a, prompt=A_PROMPT)
    responses = [
        httpx.get(server.url, timeout=30),
        httpx.get(f"{server.url}config", timeout=30),
        httpx.get(result[0]["image"]["url"], timeout=30),
    ]
    assert all(r.status_code == 200 and not r.headers.get_list("set-cookie") for r in responses)
    config = responses[1].json()
    assert config["run_history"] is False and config["analytics_enabled"] is False
    assert "runs" not in config["footer_links"]
    assert not [c for c in config["components"] if c["type"] in ("browserstate", "login_button", "deeplinkbutton")]


def test_only_generate_edit_and_read_parameters_are_callable_by_api_clients(client_a):
    api = client_a.view_api(return_format="dict", print_info=False)
    # /edit is there for every model; one that cannot edit refuses each call (tests/test_edit_server.py).
    assert list(api["named_endpoints"]) == ["/generate", "/edit", "/read_parameters"]
    assert not api["unnamed_endpoints"]


@pytest.mark.parametrize(
    "language, words",
    [
        ("en-US,en;q=0.9", ("Privacy", "60 minutes", "120 minutes", "does not record your prompts")),
        ("zh-CN,zh;q=0.9", ("隐私", "60 分钟", "120 分钟", "不记录你的提示词")),
    ],
)
def test_the_page_shows_the_privacy_notice_in_the_visitors_language(server, client_a, language, words):
    shown = Page(server.url, client_a.session_hash, language).trigger(None, "load")
    assert all(word in shown["privacy-notice"] for word in words), shown["privacy-notice"]
