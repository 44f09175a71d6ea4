"""Time limits through a running server with short ones (--session-ttl 2, --file-ttl 4): a finished session is
forgotten with its files, generated files are deleted on schedule, and nothing generated outlives the server.

Gradio expires a ``gr.State`` (checked every second) once its time-to-live has passed since it was last SET as an
output; GLM Image also forgets, every ttl/4 s, any session with no event for the TTL, with Gradio's own copy of
its last inputs and outputs. The file sweep runs every file_ttl/4 s (at least every second).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import request_kwargs
from gradio_client.exceptions import ValidationError

from glmimage.engine import LocalEngine
from glmimage.sessions import Session

SESSION_TTL, FILE_TTL = 2, 4


class SlowForSlowPrompts(LocalEngine):
    """The real engine; a prompt containing "slow" first waits past the session TTL, as a long job would."""

    def submit(self, request, on_step=None, should_stop=None, on_phase=None):
        if "slow" in request.prompt:
            time.sleep(SESSION_TTL + 1.5)
        return super().submit(request, on_step, should_stop, on_phase)


@pytest.fixture(scope="module")
def short(start_server):
    return start_server(session_ttl=SESSION_TTL, file_ttl=FILE_TTL, engine_factory=SlowForSlowPrompts)


def generate(client, **overrides) -> tuple:
    return client.predict(**request_kwargs(**{"num_inference_steps": 1, **overrides}), api_name="/generate")


def wait_until(condition: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``condition`` held; fails after ``timeout``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "condition not reached in time"
        time.sleep(0.1)
    return time.monotonic() - started


def anything_mentions(server, text: str) -> bool:
    """Whether any session Gradio still holds (our State or Gradio's own record of inputs/outputs) has ``text``."""
    for session_state in list(server.app.demo.state_holder.session_data.values()):
        blob = json.dumps(
            [session_state.config_values, [repr(v) for v in session_state.state_data.values()]],
            default=str,
            ensure_ascii=False,
        )
        if text in blob:
            return True
    return False


def test_a_finished_session_is_forgotten_with_its_files_after_the_session_ttl(short):
    client = short.client(download_files=False)
    result, *_ = generate(client, prompt="ttl-canary-finished a quiet harbour")
    holder = short.app.demo.state_holder
    session = next(v for v in holder.session_data[client.session_hash].state_data.values() if isinstance(v, Session))
    png = Path(result[0]["image"]["path"])
    assert png.exists() and session.history and anything_mentions(short, "ttl-canary-finished")

    waited = wait_until(lambda: not session.folder.exists(), timeout=SESSION_TTL + 4)
    assert waited > SESSION_TTL - 1.5  # not before the TTL (the generation itself took part of it)
    assert not png.exists() and session.history == [] and session.log == []
    wait_until(lambda: client.session_hash not in holder.session_data, timeout=SESSION_TTL + 3)
    assert not anything_mentions(short, "ttl-canary-finished")
    # The visitor may come back: the page starts a fresh session and works.
    again, *_ = generate(client, prompt="ttl-canary-back")
    assert Path(again[0]["image"]["path"]).exists()


def test_a_session_busy_generating_for_longer_than_the_ttl_keeps_its_result(short):
    client = short.client(download_files=False)
    result, *_ = generate(client, prompt="slow-canary a long job")
    state = short.app.demo.state_holder.session_data[client.session_hash]
    session = next(v for v in state.state_data.values() if isinstance(v, Session))
    assert [e.request["prompt"] for e in session.history] == ["slow-canary a long job"]
    assert Path(result[0]["image"]["path"]).exists()


def test_a_session_whose_only_request_was_refused_is_forgotten_too(short):
    # Its gr.State was never set as an output, so Gradio alone would keep it (and the prompt) indefinitely.
    client = short.client(download_files=False)
    with pytest.raises(ValidationError):
        generate(client, prompt="ttl-canary-refused", width=100)
    holder = short.app.demo.state_holder
    assert client.session_hash in holder.session_data and anything_mentions(short, "ttl-canary-refused")

    wait_until(lambda: client.session_hash not in holder.session_data, timeout=SESSION_TTL + 4)
    assert not anything_mentions(short, "ttl-canary-refused")


def test_files_older_than_the_file_ttl_are_deleted_on_schedule_and_fresh_ones_stay(short):
    # A file no session will delete (as when --max-sessions pushes a session out): only the sweep removes it.
    folder = Path(short.app.files_root) / "session-orphan"
    folder.mkdir(parents=True)
    old, fresh = folder / "old.png", folder / "fresh.png"
    old.write_bytes(b"old")
    fresh.write_bytes(b"fresh")
    created = time.monotonic()
    past = time.time() - FILE_TTL - 1
    os.utime(old, (past, past))
    wait_until(lambda: not old.exists(), timeout=2.5)  # the sweep runs every second with a 4 s TTL
    assert fresh.exists()
    wait_until(lambda: not fresh.exists(), timeout=FILE_TTL + 2.5)
    assert time.monotonic() - created >= FILE_TTL - 0.5
    wait_until(lambda: not folder.exists(), timeout=FILE_TTL + 2.5)  # the emptied folder, once quiet for the TTL


def test_after_the_server_stops_none_of_its_files_remain(start_server):
    server = start_server(session_ttl=60, file_ttl=600)
    client = server.client(download_files=False)
    result, *_ = generate(client, prompt="shutdown-canary")
    png = Path(result[0]["image"]["path"])
    assert png.exists()

    server.close()

    assert not png.exists() and not Path(server.app.files_root).exists()
