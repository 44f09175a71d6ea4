"""Every way a job can be ended from outside, through the real page: an API client cancels (gradio_client's
``job.cancel()``), or the visitor's session ends (tab closed, New session, time-to-live). The job stops at its
next step, frees its worker for the next in line, and afterwards the server draws exactly what a fresh one draws;
an ended session keeps no file, history entry or log line of the job.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import request_kwargs
from PIL import Image
from rawhttp import session_of

from glmimage.web.wiring import forget_session

LONG = 100  # steps: a long job at 512x512, as in the issue


def wait_for(condition: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
    return value


def pixels(result: tuple) -> np.ndarray:
    images, _seed, _details = result
    return np.asarray(Image.open(images[0]["image"]).convert("RGB"))


def running_record(engine: Any, since: float) -> Any:
    """The engine's record of the first job started after ``since`` (``time.monotonic()``), once it has run two
    steps. By time, not by position: ``engine.recent`` keeps the last 100 jobs, and a long test run fills it."""

    def found() -> Any:
        records = [record for record in list(engine.recent) if record.started >= since]
        return records[0] if records and records[0].steps_done >= 2 else None

    return wait_for(found)


@pytest.fixture(scope="module")
def cached(start_server):
    # A cache threshold at which the tiny model's first-block cache really skips steps, so stale cache state
    # would show in the pixels.
    return start_server(cache=True, cache_threshold=0.3)


def test_an_api_cancel_stops_the_job_within_a_step_and_the_same_request_then_draws_identical_pixels(cached):
    engine = cached.app.engine
    client = cached.client()
    before = pixels(client.predict(**request_kwargs(num_inference_steps=6), api_name="/generate"))

    since = time.monotonic()
    job = client.submit(**request_kwargs(num_inference_steps=LONG), api_name="/generate")
    record = running_record(engine, since)
    assert job.cancel()
    # /gradio_api/cancel answers once the handler was cancelled and the job's stop flag set: from here the job
    # finishes the step it is in, at most, and ends.
    steps_at_cancel = record.steps_done
    wait_for(lambda: record.ended is not None)
    assert record.outcome == "stopped"
    assert record.steps_done <= steps_at_cancel + 1 < LONG

    # The worker is free for the next in line, and the cache kept nothing of the cancelled job.
    after = pixels(client.predict(**request_kwargs(num_inference_steps=6), api_name="/generate"))
    assert engine.recent[-1].started >= record.ended
    assert np.array_equal(after, before)
    session = session_of(cached.app.demo, client.session_hash)
    assert [entry["event"] for entry in session.log] == ["generated", "stopped", "generated"]


def test_a_session_ended_mid_job_stops_the_job_and_keeps_no_file_history_or_log_line(server):
    engine = server.app.engine
    client = server.client()
    client.predict(**request_kwargs(num_inference_steps=1), api_name="/generate")
    session = session_of(server.app.demo, client.session_hash)
    folder = session.folder
    assert session.history and any(folder.iterdir())

    since = time.monotonic()
    job = client.submit(**request_kwargs(prompt="the last job", num_inference_steps=LONG), api_name="/generate")
    record = running_record(engine, since)
    forget_session(server.app.demo, client.session_hash)  # what closing the tab does (the page's unload event)
    wait_for(lambda: record.ended is not None)
    job.result(timeout=60)  # the handler has ended too: nothing of the job is still on its way
    assert record.outcome == "stopped" and record.steps_done < LONG

    assert not folder.exists()
    assert session.disposed and session.history == [] and session.log == []
    assert not any(Path(server.app.files_root).glob(f"{folder.name}/*"))
    other = server.client()
    images, _, details = other.predict(**request_kwargs(num_inference_steps=1), api_name="/generate")
    assert len(images) == 1 and details["worker"] == "cpu:0"  # the worker is free for the next visitor
