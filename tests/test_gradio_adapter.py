"""Each Gradio internal that glmimage.web.gradio_adapter relies on, checked on a small real Gradio app over HTTP.

These tests pin the installed Gradio: after an upgrade, the version test fails first, and each other test fails
when the internal it covers moved or changed meaning (the adapter never falls back to a default, so the app would
fail loudly too, instead of silently dropping the per-visitor job cap, stop-on-disconnect or session clean-up).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
import httpx
import pytest
from conftest import free_port, request_kwargs, run_async
from rawhttp import http_client, read_events, submit

from glmimage.engine import LocalEngine
from glmimage.sessions import Session
from glmimage.web import gradio_adapter as adapter
from glmimage.web.gradio_adapter import generation_jobs, logged_in_user, undelivered_results, without_api_info

STATE_DEFAULT = {"kind": "default"}


def wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


class MiniApp:
    """One queued event ("hold", which waits for ``gate``, with a validator that marks the request) and a State."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        with gr.Blocks(analytics_enabled=False) as demo:
            text = gr.Textbox()
            state = gr.State(value=STATE_DEFAULT, time_to_live=600)
            out = gr.Textbox()
            text.submit(
                self.hold,
                [text, state],
                [out, state],
                api_name="hold",
                validator=self.check,
                concurrency_limit=1,
                concurrency_id="one",
            )
        demo.queue(api_open=False)
        self.port = free_port()
        demo.launch(server_port=self.port, prevent_thread_lock=True, quiet=True)
        self.demo = demo
        self.url = f"http://127.0.0.1:{self.port}"

    async def check(self, text: str, state: Any, request: gr.Request) -> list[Any]:
        adapter.mark_request(request, "mark", f"marked {text}")
        return [gr.validate(True, ""), None]

    def hold(self, text: str, state: Any, request: gr.Request) -> tuple[str, dict[str, str]]:
        self.gate.wait(30)
        return f"{adapter.request_mark(request, 'mark')} / {adapter.request_mark(request, 'never set')}", {"got": text}

    def submit(self, client: httpx.Client, text: str, session_hash: str) -> str:
        response = client.post("/gradio_api/call/hold", json={"data": [text, None], "session_hash": session_hash})
        response.raise_for_status()
        return response.json()["event_id"]

    def result(self, client: httpx.Client, event_id: str) -> Any:
        with client.stream("GET", f"/gradio_api/call/hold/{event_id}") as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    data = json.loads(line[5:])
        return data


@pytest.fixture(scope="module")
def app():
    mini = MiniApp()
    yield mini
    mini.gate.set()
    mini.demo.close()


@pytest.fixture
def client(app):
    with httpx.Client(base_url=app.url, timeout=30) as http:
        yield http


@pytest.fixture
def gate(app):
    app.gate.clear()
    yield app.gate
    app.gate.set()


def test_the_installed_gradio_is_the_version_the_adapter_was_checked_against():
    assert gr.__version__ == adapter.GRADIO_VERSION, (
        f"Gradio {gr.__version__} is installed; glmimage/web/gradio_adapter.py was checked against "
        f"{adapter.GRADIO_VERSION}. Re-check every function there against the new Gradio, then move the pin."
    )


def test_waiting_and_running_events_name_their_api_client_and_session(app, client, gate):
    running = app.submit(client, "first", "session-run")
    wait_until(lambda: len(list(adapter.running_events(app.demo))) == 1)
    waiting = app.submit(client, "second", "session-wait")
    wait_until(lambda: adapter.queue_length(app.demo) == 1)

    events = list(adapter.waiting_and_running_events(app.demo))
    assert [adapter.event_session_hash(e) for e in events] == ["session-wait", "session-run"]
    assert all(adapter.event_api_name(e) == "hold" for e in events)
    assert all(adapter.event_client_host(e) == "127.0.0.1" for e in events)
    assert [adapter.event_session_hash(e) for e in adapter.running_events(app.demo)] == ["session-run"]

    gate.set()
    assert app.result(client, running)[0] == "marked first / None"
    assert app.result(client, waiting)[0] == "marked second / None"
    wait_until(lambda: not list(adapter.waiting_and_running_events(app.demo)))
    assert adapter.queue_length(app.demo) == 0


def test_the_validator_marks_the_request_the_function_then_reads(app, client):
    event_id = app.submit(client, "x", "session-mark")
    assert app.result(client, event_id)[0] == "marked x / None"


def test_a_running_event_is_no_longer_alive_once_its_client_drops_the_stream(app, gate):
    leaver = httpx.Client(base_url=app.url, timeout=30)
    event_id = app.submit(leaver, "leaving", "session-leaves")
    with leaver.stream("GET", f"/gradio_api/call/hold/{event_id}"):
        wait_until(lambda: len(list(adapter.running_events(app.demo))) == 1)
        event = next(adapter.running_events(app.demo))
        assert adapter.event_alive(event) is True
    leaver.close()
    wait_until(lambda: adapter.event_alive(event) is False)


def test_a_session_is_closed_once_its_page_heartbeat_ends(app, client):
    app.result(client, app.submit(client, "hello", "session-heartbeat"))
    assert adapter.session_closed(app.demo, "session-heartbeat") is False
    assert adapter.session_closed(app.demo, "no-such-session") is False
    with (
        httpx.Client(base_url=app.url, timeout=30) as page,
        page.stream("GET", "/gradio_api/heartbeat/session-heartbeat") as heartbeat,
    ):
        next(heartbeat.iter_raw())  # the page is open
    wait_until(lambda: adapter.session_closed(app.demo, "session-heartbeat"))


def test_session_values_last_activity_and_dropping_a_session(app, client):
    before = time.time()
    app.result(client, app.submit(client, "kept", "session-drop"))

    assert adapter.session_values(app.demo, "session-drop") == [{"got": "kept"}]
    assert adapter.session_values(app.demo, "no-such-session") == []
    seen = adapter.last_activity(app.demo)["session-drop"]
    assert before - 1 <= seen.timestamp() <= time.time() + 1

    assert adapter.drop_session(app.demo, "session-drop") == [{"got": "kept"}]
    assert "session-drop" not in adapter.last_activity(app.demo)
    assert adapter.session_values(app.demo, "session-drop") == []
    assert adapter.drop_session(app.demo, "session-drop") == []


def test_the_upload_folder_is_gradios_temporary_folder():
    assert adapter.upload_folder() == Path(os.environ["GRADIO_TEMP_DIR"])


# ---- shutdown drain and login, on the real app -------------------------------------------------------------------

# htpasswd -nbB -C 5 alice 'correct horse 电池'
HTPASSWD = "alice:$2y$05$vZZWz/LxLGPW1rco5HNO0OsRK7cDt0dHbDWDW7R1NgmwwgCyes.kS\n"


def test_generation_jobs_counts_the_waiting_and_the_running_generations(start_server):
    server = start_server(concurrency=1)
    demo = server.app.demo
    assert generation_jobs(demo) == (0, 0)
    first = submit(http_client(server.url, source="127.0.0.41"), request_kwargs(num_inference_steps=20))
    wait_until(lambda: generation_jobs(demo) == (0, 1), timeout=60)
    second = submit(http_client(server.url, source="127.0.0.42"), request_kwargs())
    wait_until(lambda: generation_jobs(demo) == (1, 1), timeout=60)
    assert generation_jobs(demo, api_names=("no-such-event",)) == (0, 0)

    # Finished jobs leave the queue before their result is read; until it is, the result is undelivered.
    wait_until(lambda: generation_jobs(demo) == (0, 0), timeout=120)
    assert undelivered_results(demo) == 2
    for response, source in ((first, "127.0.0.41"), (second, "127.0.0.42")):
        assert read_events(http_client(server.url, source=source), response.json()["event_id"])[-1][0] == "complete"
    wait_until(lambda: undelivered_results(demo) == 0, timeout=10)


def test_logged_in_user_reads_the_cookie_gradios_login_sets(start_server, tmp_path):
    path = tmp_path / "htpasswd"
    path.write_text(HTPASSWD, encoding="utf-8")
    server = start_server(auth_file=str(path))
    app = server.app.demo.server_app
    client = http_client(server.url)
    assert client.post("/login", data={"username": "alice", "password": "correct horse 电池"}).status_code == 200
    cookies = dict(client.cookies)
    assert logged_in_user(app, cookies) == "alice"
    assert logged_in_user(app, {}) is None
    assert logged_in_user(app, {name: "forged-token" for name in cookies}) is None


def test_without_api_info_empties_the_api_description_gradio_writes_into_its_page(server):
    page = http_client(server.url).get("/").content
    assert b'"/generate"' in page and b"window.gradio_api_info = " in page
    stripped = without_api_info(page)
    assert b'"/generate"' not in stripped
    assert b'window.gradio_api_info = {"named_endpoints":{},"unnamed_endpoints":{}};</script>' in stripped
    assert stripped.replace(b" ", b"").count(b"window.gradio_config=") == 1  # the rest of the page is intact
    with pytest.raises(ValueError, match="gradio_api_info"):
        without_api_info(b"<html>a page Gradio no longer writes the same way</html>")


# ---- uploads ----------------------------------------------------------------------------------------------------


class UploadApp:
    """A file input whose event returns the path Gradio hands over (unprocessed, as /read_parameters gets it)."""

    def __init__(self) -> None:
        with gr.Blocks(analytics_enabled=False) as demo:
            self.file = gr.File()
            out = gr.Textbox()
            self.file.upload(lambda payload: payload["path"], self.file, out, api_name="path_of", preprocess=False)
        demo.queue(api_open=False)
        self.port = free_port()
        demo.launch(server_port=self.port, prevent_thread_lock=True, quiet=True)
        self.demo = demo
        self.url = f"http://127.0.0.1:{self.port}"

    def upload(self, http: httpx.Client, data: bytes, name: str) -> str:
        response = http.post("/gradio_api/upload", files={"files": (name, data, "application/octet-stream")})
        response.raise_for_status()
        return response.json()[0]

    def path_of(self, http: httpx.Client, path: str, session_hash: str) -> Any:
        body = {"data": [{"path": path, "orig_name": "secret-name.png", "meta": {"_type": "gradio.FileData"}}]}
        event_id = http.post("/gradio_api/call/path_of", json={**body, "session_hash": session_hash}).json()
        with http.stream("GET", f"/gradio_api/call/path_of/{event_id['event_id']}") as stream:
            lines = [line for line in stream.iter_lines() if line.startswith(("event:", "data:"))]
        return lines


@pytest.fixture(scope="module")
def upload_app():
    mini = UploadApp()
    yield mini
    mini.demo.close()


def test_an_upload_is_noted_by_the_upload_route_and_only_an_upload_is(upload_app, tmp_path):
    with httpx.Client(base_url=upload_app.url, timeout=30) as http:
        path = upload_app.upload(http, b"some picture bytes", "picture.png")
    assert Path(path).read_bytes() == b"some picture bytes"
    assert Path(path).parent.parent == adapter.upload_folder()  # a folder of its own, named after its content
    assert adapter.is_gradio_upload(upload_app.demo, path) is True
    elsewhere = adapter.upload_folder() / "not-uploaded.png"
    elsewhere.write_bytes(b"x")
    assert adapter.is_gradio_upload(upload_app.demo, str(elsewhere)) is False
    elsewhere.unlink()


def test_gradio_notes_any_path_given_to_a_file_input_and_keeps_the_sessions_input_until_forgotten(upload_app):
    with httpx.Client(base_url=upload_app.url, timeout=30) as http:
        path = upload_app.upload(http, b"another picture", "mine.png")
        given = adapter.upload_folder() / "given-not-uploaded.png"
        given.write_bytes(b"y")
        for named in (path, str(given)):
            assert upload_app.path_of(http, named, "session-upload")[-1] == f"data: {json.dumps([named])}"
            # Gradio notes the path for its clean-up whether or not it was uploaded: that proves nothing.
            assert named in upload_app.file.temp_files
    stored = upload_app.demo.state_holder.session_data["session-upload"].config_values[upload_app.file._id]
    assert stored["props"]["value"]["orig_name"] == "secret-name.png"

    adapter.forget_input_value(upload_app.demo, "session-upload", upload_app.file)
    assert stored["props"]["value"] is None
    adapter.forget_input_value(upload_app.demo, "no-such-session", upload_app.file)  # nothing to forget

    adapter.forget_gradio_upload(upload_app.demo, upload_app.file, path)
    assert not adapter.is_gradio_upload(upload_app.demo, path) and path not in upload_app.file.temp_files
    given.unlink()


def test_an_upload_is_listed_and_deleting_it_takes_its_folder_and_every_note_gradio_keeps_of_it(upload_app):
    with httpx.Client(base_url=upload_app.url, timeout=30) as http:
        path = upload_app.upload(http, b"a picture to delete", "delete-me.png")
        upload_app.path_of(http, path, "session-delete")  # the file input notes it too
    assert path in adapter.gradio_uploads(upload_app.demo) and path in upload_app.file.temp_files
    adapter.delete_gradio_upload(upload_app.demo, path)
    assert not Path(path).exists() and not Path(path).parent.exists()
    assert path not in adapter.gradio_uploads(upload_app.demo) and path not in upload_app.file.temp_files
    adapter.delete_gradio_upload(upload_app.demo, path)  # gone already: nothing to do


def test_a_waiting_or_running_jobs_files_are_named_until_it_ends():
    gate = threading.Event()
    with gr.Blocks(analytics_enabled=False) as demo:
        files = gr.File(file_count="multiple")
        out = gr.Textbox()
        files.change(lambda value: gate.wait(30) and "done", files, out, api_name="hold_files", preprocess=False)
    demo.queue(api_open=False)
    port = free_port()
    demo.launch(server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            path = http.post("/gradio_api/upload", files={"files": ("held.png", b"held", "image/png")}).json()[0]
            body = {"data": [[{"path": path, "meta": {"_type": "gradio.FileData"}}]], "session_hash": "held-files"}
            assert http.post("/gradio_api/call/hold_files", json=body).status_code == 200
            wait_until(lambda: path in adapter.files_named_by_jobs(demo))
            gate.set()
        wait_until(lambda: path not in adapter.files_named_by_jobs(demo))
    finally:
        gate.set()
        demo.close()


def test_an_upload_refusal_raised_while_gradio_reads_the_body_deletes_what_it_wrote(tmp_path):
    from gradio.route_utils import GradioMultiPartParser
    from starlette.datastructures import Headers

    boundary = "glmboundary"
    first = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n'
        + "x" * 1000
        + f"\r\n--{boundary}\r\n"
    ).encode()

    async def body() -> Any:
        yield first
        raise adapter.upload_refusal("too many files")

    headers = Headers({"content-type": f"multipart/form-data; boundary={boundary}"})
    parser = GradioMultiPartParser(headers, body(), upload_dir=str(tmp_path), max_file_size=10**9)
    with pytest.raises(Exception, match="too many files") as refused:
        run_async(parser.parse())
    assert type(refused.value).__name__ == "MultiPartException"
    assert list(tmp_path.iterdir()) == []  # the first file, half written, was deleted


def test_an_events_payload_is_what_the_front_end_sent_with_it():
    sent = {"file": {"path": "/tmp/a.png", "orig_name": "a.png"}, "index": 2}
    assert adapter.event_payload(gr.EventData(None, sent)) == sent


# ---- the page script's view of Gradio's front end -------------------------------------------------------------------


def test_the_front_end_still_draws_the_progress_the_page_script_reads():
    assets = Path(gr.__file__).parent / "templates" / "frontend" / "assets"
    trackers = [p.read_text(encoding="utf-8") for p in assets.glob("*.js") if p.name.startswith("statustracker")]
    assert trackers, "Gradio's status tracker moved: re-check gradio_adapter.page_script"
    tracker = "\n".join(trackers)
    assert 'data-testid="status-tracker"' in tracker
    # The class the tracker drops while it shows progress, the element holding the text, and the text's forms.
    assert f"{adapter.HIDDEN_CLASS}:" in tracker and f"{adapter.PROGRESS_TEXT[1:]} " in tracker
    assert "queue: ${" in tracker and "processing |" in tracker


def test_the_page_script_fills_in_the_title_and_words_as_javascript_strings():
    script = adapter.page_script('GLM "Image"', {"en": {"step": "step {done}/{total}", "queue": "queue"}})
    assert script.lstrip().startswith("(() => {")  # runs itself when the page loads it
    assert 'const TITLE = "GLM \\"Image\\""' in script and '"step": "step {done}/{total}"' in script
    assert "__" not in script.replace("__gradio", "")  # every marker replaced


# ---- the security layer's internals ------------------------------------------------------------------------------


class SlowEngine(LocalEngine):
    """The real engine, a pause after each step: jobs last long enough to be seen waiting and running."""

    steps: dict[str, int] = {}

    def generate(self, request: Any, on_step: Any = None, should_stop: Any = None, on_phase: Any = None) -> Any:
        def slow_step(done: int, total: int) -> None:
            self.steps[request.prompt] = done
            time.sleep(0.05)
            if on_step is not None:
                on_step(done, total)

        return super().generate(request, slow_step, should_stop, on_phase)


@pytest.fixture(scope="module")
def slow(start_server):
    return start_server(engine_factory=SlowEngine, listener_timeout=60)


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
    wait_until(lambda: any(job.running for job in adapter.queued_jobs(demo)))
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
    wait_until(lambda: not adapter.queued_jobs(demo))  # the waiting one left the queue, the running one stopped
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
