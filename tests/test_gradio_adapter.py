"""Each Gradio internal the app relies on (``glmimage/web/gradio_adapter.py``), checked against the running Gradio:
when an upgrade renames or changes one, the test of that function fails here, by name, instead of a security
check quietly letting everything through."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from conftest import request_kwargs
from rawhttp import http_client, read_events, submit

from glmimage.engine import LocalEngine
from glmimage.sessions import Session
from glmimage.web import gradio_adapter as adapter


class SlowEngine(LocalEngine):
    """The real engine, a pause after each step: jobs last long enough to be seen waiting and running."""

    steps: dict[str, int] = {}

    def generate(self, request: Any, on_step: Any = None, should_stop: Any = None) -> Any:
        def slow_step(done: int, total: int) -> None:
            self.steps[request.prompt] = done
            time.sleep(0.05)
            if on_step is not None:
                on_step(done, total)

        return super().generate(request, slow_step, should_stop)


@pytest.fixture(scope="module")
def slow(start_server):
    return start_server(engine_factory=SlowEngine, listener_timeout=60)


def wait_for(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(0.02)


def test_event_functions_describe_the_pages_events(server):
    events = {facts.api_name: facts for facts in adapter.event_functions(server.app.demo)}
    generate = events["generate"]
    assert (generate.queued, generate.public, generate.group) == (True, True, "gpu")
    assert generate.inputs == 11  # the ten API fields and the session State
    stop = events["request_stop"]
    assert (stop.queued, stop.public, stop.inputs) == (False, False, 1)
    assert adapter.event_function(server.app.demo, generate.fn_index) == generate
    assert adapter.event_function_named(server.app.demo, "generate") == generate
    assert adapter.event_function(server.app.demo, 99_999) is None
    assert adapter.event_function_named(server.app.demo, "no_such_event") is None


def test_sessions_are_listed_oldest_first_counted_and_dropped_with_their_state(server):
    demo = server.app.demo
    client = http_client(server.url)
    for name in ("adapter-old", "adapter-new"):
        assert read_events(
            client, submit(client, request_kwargs(num_inference_steps=1), session_hash=name).json()["event_id"]
        )
    order = adapter.sessions_oldest_first(demo)
    assert order.index("adapter-old") < order.index("adapter-new")
    assert adapter.session_exists(demo, "adapter-old") and adapter.session_count(demo) >= 2
    count = adapter.session_count(demo)
    values = adapter.drop_session(demo, "adapter-old")
    assert any(isinstance(value, Session) and value.history for value in values)
    assert not adapter.session_exists(demo, "adapter-old")
    assert adapter.session_count(demo) == count - 1
    assert adapter.drop_session(demo, "adapter-old") == []


def test_queued_jobs_show_waiting_and_running_jobs_and_drop_job_stops_one(slow):
    demo = slow.app.demo
    client = http_client(slow.url, source="127.0.0.90")
    running = submit(client, request_kwargs(num_inference_steps=100, prompt="running")).json()["event_id"]
    waiting = submit(client, request_kwargs(num_inference_steps=1, prompt="waiting"), session_hash="adapter-wait")
    waiting_id = waiting.json()["event_id"]
    wait_for(lambda: any(job.running for job in adapter.queued_jobs(demo)))
    jobs = {job.event_id: job for job in adapter.queued_jobs(demo)}
    assert jobs[running].running and jobs[running].group == "gpu" and jobs[running].session_hash == running
    assert not jobs[waiting_id].running and jobs[waiting_id].session_hash == "adapter-wait"
    assert 0 <= time.monotonic() - jobs[waiting_id].enqueued_at < 60
    assert adapter.waiting_in_groups(demo, lambda group: group == "gpu") == 1
    assert adapter.waiting_in_groups(demo, lambda group: group != "gpu") == 0
    assert adapter.job_exists(demo, waiting_id) and not adapter.job_exists(demo, "0" * 32)
    assert adapter.session_of_job(demo, waiting_id) == "adapter-wait"
    assert adapter.session_of_job(demo, "0" * 32) is None
    assert adapter.has_messages_for(demo, "adapter-wait") and not adapter.has_messages_for(demo, "nobody")

    for event_id in (waiting_id, running):
        _run_on_server_loop(slow, adapter.drop_job(demo, event_id))
    wait_for(lambda: not adapter.queued_jobs(demo))  # the waiting one left the queue, the running one stopped
    assert slow.app.engine.steps["running"] < 100 and "waiting" not in slow.app.engine.steps


def _run_on_server_loop(server: Any, coroutine: Any) -> None:
    """Gradio's queue lives on the server's event loop; run a coroutine there and wait for it."""
    asyncio.run_coroutine_threadsafe(coroutine, server.app.edge.loop).result(30)


def test_guard_queue_push_runs_before_every_join_and_can_refuse_it(slow):
    demo = slow.app.demo
    seen: list[tuple[str, dict[str, int]]] = []
    queue = demo._queue
    guarded = queue.push

    def refuse_all(facts: adapter.EventFacts, joining: Any) -> adapter.PushResult:
        seen.append((facts.api_name, dict(joining)))
        return False, "Queue is full. Max size is 0 and size is 0.", "queue_full"

    adapter.guard_queue_push(demo, refuse_all)
    try:
        response = submit(http_client(slow.url, source="127.0.0.91"), request_kwargs(num_inference_steps=1))
    finally:
        queue.push = guarded
    assert response.status_code == 503 and "Queue is full" in response.text
    assert seen and seen[-1][0] == "generate"


def test_has_server_function_only_for_gradios_marked_methods(server):
    demo = server.app.demo
    some_component = next(iter(demo.blocks))
    assert not adapter.has_server_function(demo, 99_999, "anything")
    assert not adapter.has_server_function(demo, some_component, "no_such_method")
    assert not adapter.has_server_function(demo, some_component, "__class__")
    assert not adapter.has_server_function(demo, "1", "x")
    # A component Gradio gives server functions (FileExplorer.ls), to show the check can say yes.
    with gr.Blocks() as other:
        explorer = gr.FileExplorer(root_dir=str(Path(os.environ["GRADIO_TEMP_DIR"])))
    assert adapter.has_server_function(other, explorer._id, "ls")


def test_upload_folder_is_gradios_temporary_folder():
    assert adapter.upload_folder() == Path(os.environ["GRADIO_TEMP_DIR"])
