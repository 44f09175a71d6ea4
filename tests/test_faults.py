"""Faults injected behind the real page, inside the real pipeline call: the GPU runs out of memory, the pipeline
raises (both from a forward hook on a real transformer block), the disk is full, the visitor presses Stop or goes
away. Each time the visitor reads a clear message
(no traceback, no internal path), the session's history stays exactly as it was, the traceback goes to the
server log without the prompt, and the next request succeeds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import pytest
import torch
from conftest import request_kwargs
from gradio_client.exceptions import AppError
from inject import raising_in_every_worker
from rawhttp import call, http_client, session_of, submit

from glmimage.engine import GenerationResult, LocalEngine

SECRET_PROMPT = "a lighthouse painted by xyzzy-secret-words"


class FaultyEngine(LocalEngine):
    """The real engine; its pipeline fails on demand INSIDE the real call (a forward hook on a real transformer
    block raises at step 2), its steps can run slowly, and every call is recorded."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fail_next: Callable[[], BaseException] | None = None  # makes the error the next call raises
        self.disk_full_next = False  # the next result's images cannot be saved
        self.step_delay = 0.0
        self.calls: list[dict[str, Any]] = []  # one per pipeline call: prompt, steps done, total
        self.failure: dict[str, Any] = {}  # the injected failure's state: "activations", what its frame held

    def generate(
        self, request: Any, on_step: Any = None, should_stop: Any = None, on_phase: Any = None
    ) -> GenerationResult:
        record = {"prompt": request.prompt, "steps": 0, "total": request.num_inference_steps}
        self.calls.append(record)

        def on_step_end(done: int, total: int) -> None:
            record["steps"] = done
            time.sleep(self.step_delay)
            if on_step is not None:
                on_step(done, total)

        failure, self.fail_next = self.fail_next, None
        # At the transformer's 2nd call: the uncond pass of step 1, inside the loop even for 1-step jobs.
        with raising_in_every_worker(self.loader.workers, failure, at_call=2) if failure else nullcontext({}) as state:
            self.failure = state
            result = super().generate(request, on_step_end, should_stop, on_phase)
        if self.disk_full_next:
            self.disk_full_next = False
            result.images = [FullDiskImage() for _ in result.images]
        return result


class FullDiskImage:
    def save(self, *_args: Any, **_kwargs: Any) -> None:
        raise OSError(28, "No space left on device", "/srv/glmimage/internal/cache/x.png")


@pytest.fixture(scope="module")
def faulty(start_server):
    server = start_server(engine_factory=FaultyEngine)
    yield server
    server.app.engine.step_delay = 0.0


@pytest.fixture
def engine(faulty) -> FaultyEngine:
    engine = faulty.app.engine
    engine.fail_next, engine.disk_full_next, engine.step_delay = None, False, 0.0
    return engine


def history_snapshot(session: Any) -> list[tuple[str, tuple[str, ...]]]:
    return [(entry.id, tuple(entry.files)) for entry in session.history]


def fast(**overrides: Any) -> dict[str, Any]:
    return request_kwargs(num_inference_steps=1, **overrides)


def assert_clean_message(message: str) -> None:
    for marker in ("Traceback", 'File "', ".py", "/srv/", "/tmp/", "xyzzy", "boom"):
        assert marker not in message, message


def test_out_of_memory_gives_a_clear_message_frees_the_cuda_cache_and_the_next_request_succeeds(
    faulty, engine, monkeypatch
):
    emptied: list[bool] = []

    def empty_cache() -> None:
        # The cache can only give memory back once nothing holds the failed call's tensors.
        emptied.append(engine.failure.get("activations") is not None and engine.failure["activations"]() is None)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", empty_cache)
    client = faulty.client()
    client.predict(**fast(), api_name="/generate")
    session = session_of(faulty.app.demo, client.session_hash)
    before = history_snapshot(session)

    engine.fail_next = lambda: torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.10 GiB "
        "total capacity) at /opt/torch/csrc/CUDACachingAllocator.cpp:1234"
    )
    with pytest.raises(AppError) as caught:
        client.predict(**fast(prompt=SECRET_PROMPT), api_name="/generate")
    message = str(caught.value)
    assert "ran out of memory" in message and "smaller size or fewer images" in message
    assert_clean_message(message)
    assert emptied == [True]
    assert history_snapshot(session) == before
    assert session.log[-1]["event"] == "failed" and session.log[-1]["reason"] == "error.oom"

    images, _, _ = client.predict(**fast(), api_name="/generate")
    assert len(images) == 1
    assert len(session.history) == len(before) + 1


def test_pipeline_error_gives_a_clear_message_and_logs_the_traceback_without_the_prompt(faulty, engine, caplog):
    caplog.set_level(logging.INFO)
    client = faulty.client()
    client.predict(**fast(), api_name="/generate")
    session = session_of(faulty.app.demo, client.session_hash)
    before = history_snapshot(session)

    engine.fail_next = lambda: RuntimeError("boom in /opt/internal/kernels.py line 42")
    with pytest.raises(AppError) as caught:
        client.predict(**fast(prompt=SECRET_PROMPT), api_name="/generate")
    message = str(caught.value)
    assert "failed because of an error on the server" in message
    assert_clean_message(message)
    assert history_snapshot(session) == before

    failures = [r for r in caplog.records if r.exc_info and "boom in /opt/internal" in str(r.exc_info[1])]
    assert len(failures) == 1
    assert "Traceback" in caplog.text and "RuntimeError: boom in /opt/internal" in caplog.text
    assert "xyzzy" not in caplog.text

    images, _, _ = client.predict(**fast(), api_name="/generate")
    assert len(images) == 1 and len(session.history) == len(before) + 1


def test_a_full_disk_while_saving_gives_a_clear_message_and_keeps_the_history(faulty, engine, caplog):
    client = faulty.client()
    client.predict(**fast(), api_name="/generate")
    session = session_of(faulty.app.demo, client.session_hash)
    before = history_snapshot(session)

    engine.disk_full_next = True
    with pytest.raises(AppError) as caught:
        client.predict(**fast(prompt=SECRET_PROMPT), api_name="/generate")
    message = str(caught.value)
    assert "failed because of an error on the server" in message
    assert_clean_message(message)
    assert history_snapshot(session) == before
    assert "No space left on device" in caplog.text and "xyzzy" not in caplog.text

    images, _, _ = client.predict(**fast(), api_name="/generate")
    assert len(images) == 1


def test_an_error_response_over_plain_http_carries_no_traceback_or_path(faulty, engine):
    engine.fail_next = lambda: RuntimeError("boom in /opt/internal/kernels.py line 42")
    outcome = call(http_client(faulty.url), fast(prompt=SECRET_PROMPT))
    assert outcome.kind == "error"
    assert "failed because of an error on the server" in outcome.error
    assert_clean_message(outcome.body)


def wait_for(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_stop_ends_the_job_between_steps_and_leaves_the_history_unchanged(faulty, engine):
    client = faulty.client()
    client.predict(**fast(), api_name="/generate")
    session = session_of(faulty.app.demo, client.session_hash)
    before = history_snapshot(session)

    engine.step_delay = 0.1
    calls_before = len(engine.calls)
    job = client.submit(**request_kwargs(num_inference_steps=40), api_name="/generate")
    wait_for(lambda: len(engine.calls) > calls_before and engine.calls[-1]["steps"] >= 1)
    session.stop_requested_at = time.monotonic()  # what the Stop button does
    job.result(timeout=60)
    assert engine.calls[-1]["steps"] < 40
    assert session.log[-1]["event"] == "stopped"
    assert history_snapshot(session) == before


def test_a_visitor_who_disconnects_mid_generation_does_not_block_the_queue(faulty, engine, caplog):
    caplog.set_level(logging.INFO)
    engine.step_delay = 0.1
    calls_before = len(engine.calls)
    leaver = http_client(faulty.url)
    response = submit(leaver, request_kwargs(prompt="the one who leaves", num_inference_steps=60))
    with leaver.stream("GET", f"/gradio_api/call/generate/{response.json()['event_id']}"):
        wait_for(lambda: len(engine.calls) > calls_before and engine.calls[-1]["steps"] >= 1)
    leaver.close()

    outcome = call(http_client(faulty.url, source="127.0.0.2"), fast(prompt="the next visitor"))
    assert outcome.kind == "image"
    left = next(c for c in engine.calls[calls_before:] if c["prompt"] == "the one who leaves")
    assert left["steps"] < 30, left  # stopped within a few steps, not after holding the GPU for 60
    assert "generation ended: status.stopped" in caplog.text


def test_a_queued_job_of_a_visitor_who_left_never_runs(faulty, engine):
    engine.step_delay = 0.1
    calls_before = len(engine.calls)
    stayer = http_client(faulty.url)
    # 30 steps of at least 0.1 s: long enough for Gradio's once-a-second queue update to notice the leaver.
    first = submit(stayer, request_kwargs(prompt="the one who stays", num_inference_steps=30))
    lines: list[str] = []

    def read_to_the_end() -> None:
        with stayer.stream("GET", f"/gradio_api/call/generate/{first.json()['event_id']}") as stream:
            lines.extend(stream.iter_lines())

    reader = threading.Thread(target=read_to_the_end)
    reader.start()
    wait_for(lambda: len(engine.calls) > calls_before)

    leaver = http_client(faulty.url, source="127.0.0.3")
    queued = submit(leaver, fast(prompt="the one who leaves the queue"))
    assert queued.status_code == 200
    with leaver.stream("GET", f"/gradio_api/call/generate/{queued.json()['event_id']}"):
        time.sleep(0.3)
    leaver.close()
    reader.join(60)
    assert "event: complete" in lines

    engine.step_delay = 0.0
    assert call(http_client(faulty.url, source="127.0.0.4"), fast(prompt="after them")).kind == "image"
    prompts = [c["prompt"] for c in engine.calls[calls_before:]]
    assert prompts == ["the one who stays", "after them"]
