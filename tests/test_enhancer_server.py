"""The prompt enhancer through the running server, with a real local HTTP server standing in for the chat endpoint:
its calls count against a per-visitor allowance, its input follows the prompt's rules, it runs through the queue
with a concurrency limit of its own, and replaying its hidden event over plain HTTP (by event index, as the page's
own front end calls it) meets the same checks. Nothing refused ever reaches the chat endpoint.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from typing import Any

import httpx
import pytest
from test_enhancer import ChatServer, completion

from glmimage.web.wiring import ENHANCER_CONCURRENCY

CAPTION = "A paper boat on a quiet lake at dawn, soft mist, warm light."


class CountingChatServer(ChatServer):
    """The chat stand-in, counting how many requests it serves at once."""

    def __init__(self) -> None:
        super().__init__()
        self.reply.body = completion(CAPTION)
        self.lock = threading.Lock()
        self.now = self.peak = 0

    def finish_request(self, request: Any, client_address: Any) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            super().finish_request(request, client_address)
        finally:
            with self.lock:
                self.now -= 1


@pytest.fixture(scope="module")
def chat():
    server = CountingChatServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture(scope="module")
def app(start_server, chat):
    saved = {name: os.environ.get(name) for name in ("GLMIMAGE_ENHANCER_URL", "GLMIMAGE_ENHANCER_MODEL")}
    os.environ.update(GLMIMAGE_ENHANCER_URL=chat.base_url, GLMIMAGE_ENHANCER_MODEL="glm-4-flash")
    try:
        return start_server(rate_limit="2/minute")
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(autouse=True)
def fresh_chat(chat):
    chat.requests.clear()
    chat.reply.delay_s = 0.0
    chat.peak = 0


def enhance_index(url: str) -> int:
    """The event index of the Enhance button's click, from the page config (what the front end sends)."""
    config = httpx.get(f"{url.rstrip('/')}/config", timeout=30).json()
    button = next(c["id"] for c in config["components"] if c["props"].get("elem_id") == "enhance")
    return next(d["id"] for d in config["dependencies"] if [button, "click"] in d["targets"])


def press_enhance(url: str, text: Any, source: str, session_hash: str | None = None) -> tuple[int, Any]:
    """Join the queue with the enhancer's event, as the page does; (HTTP status of the join, the event's
    output or the refusal)."""
    session_hash = session_hash or uuid.uuid4().hex
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(base_url=url.rstrip("/"), timeout=60, transport=transport) as http:
        joined = http.post(
            "/gradio_api/queue/join",
            json={"data": [text], "fn_index": enhance_index(url), "session_hash": session_hash, "trigger_id": None},
        )
        if joined.status_code != 200:
            return joined.status_code, joined.json()["detail"]
        event_id = joined.json()["event_id"]
        with http.stream("GET", "/gradio_api/queue/data", params={"session_hash": session_hash}) as stream:
            for line in stream.iter_lines():
                message = json.loads(line[5:]) if line.startswith("data:") else {}
                if message.get("msg") == "process_completed" and message.get("event_id") == event_id:
                    return 200, message["output"]["data"][0]
    raise AssertionError("no result")


def refusal_text(detail: Any) -> str:
    return " ".join(d["message"] for d in detail if isinstance(d, dict) and not d.get("is_valid", True))


def test_enhance_rewrites_the_prompt_through_the_chat_endpoint(app, chat):
    status, output = press_enhance(app.url, "a paper boat", "127.0.2.1")
    assert (status, output) == (200, CAPTION)
    assert [r.body["messages"][1]["content"] for r in chat.requests] == ["a paper boat"]


def test_replaying_the_hidden_event_is_limited_per_visitor_whatever_the_session(app, chat):
    results = [press_enhance(app.url, f"boat {i}", "127.0.2.2") for i in range(3)]  # a fresh session each time
    assert [status for status, _ in results] == [200, 200, 422]
    assert refusal_text(results[2][1]).startswith("Too many requests: the limit is 2/minute per visitor.")
    assert len(chat.requests) == 2
    assert press_enhance(app.url, "another visitor", "127.0.2.3")[0] == 200


@pytest.mark.parametrize(
    "text, words",
    [
        ("x" * 100_000, "Prompt is too long: 100000 characters, at most 4000."),
        ("a\x00b", "Prompt contains control characters"),
        (["a list"], "Prompt must be text."),
    ],
    ids=["100-kB", "control-character", "not-text"],
)
def test_what_the_enhancer_may_send_out_is_capped_like_a_prompt(app, chat, text, words):
    status, detail = press_enhance(app.url, text, "127.0.2.4")
    assert status == 422 and refusal_text(detail).startswith(words)
    assert chat.requests == []


def test_the_enhancer_is_not_callable_around_the_queue_or_its_checks(app, chat):
    index = enhance_index(app.url)
    with httpx.Client(base_url=app.url.rstrip("/"), timeout=30) as http:
        direct = http.post("/gradio_api/run/predict", json={"data": ["a boat"], "fn_index": index})
        assert direct.status_code == 404
        # Gradio routes a hidden event by its function's name too; the same checks apply there.
        by_name = http.post("/gradio_api/call/enhance_prompt", json={"data": ["x" * 100_000]})
        assert by_name.status_code == 422 and refusal_text(by_name.json()["detail"]).startswith("Prompt is too long")
    assert chat.requests == []


def test_enhancer_calls_run_at_most_its_concurrency_at_once(app, chat):
    chat.reply.delay_s = 1.5
    visitors = [
        threading.Thread(target=press_enhance, args=(app.url, f"boat {i}", f"127.0.3.{i + 1}"))
        for i in range(ENHANCER_CONCURRENCY + 2)
    ]
    for visitor in visitors:
        visitor.start()
    for visitor in visitors:
        visitor.join(60)
    assert len(chat.requests) == ENHANCER_CONCURRENCY + 2
    assert chat.peak == ENHANCER_CONCURRENCY
