"""The server against a hostile visitor on the open internet, each finding of issue 16 reproduced on 127.0.0.1 with
bounded loops: what an attacker can make the server hold (memory), write (disk), run (queue and GPU time) or log,
what every response tells the browser (headers), and what counts as an empty prompt.

Visitors and attackers are told apart by their loopback source address (127.0.0.x, ``rawhttp.http_client``), as
the server tells them apart on the internet. The server runs in this process, so this process's resident memory
is the server's.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from conftest import files_in, request_kwargs
from rawhttp import as_data, call, http_client, read_events, session_of, submit

from glmimage import limits
from glmimage.config import Settings, load_settings
from glmimage.engine import LocalEngine
from glmimage.errors import InputError, Refused
from glmimage.ratelimit import RateLimit, VisitorLimiter
from glmimage.requests import cost_of, validate_request
from glmimage.service import GenerationService
from glmimage.web.security import sweep_upload_leftovers

MIB = 2**20
PIECE = 64 * 1024
BODY_BYTES = 100 * MIB
BODIES = 10
# Ten refused 100 MB bodies may leave the server at most this much above its idle memory (each was cut off
# after the 256 KiB limit, so what is left is allocator noise).
MEMORY_BOUND_MIB = 64
# A body is cut off once the limit is passed: what the client managed to push before the server closed the
# connection is bounded by the kernel's socket buffers, far below the 100 MB it meant to send.
CUT_OFF_BOUND_BYTES = 16 * MIB
WAIT_BOUND_S = 30.0  # no condition below may take longer to come true
HEADERS = ("x-content-type-options", "referrer-policy", "content-security-policy")
INVISIBLE_PROMPTS = [
    "\u200b",
    "\u200b\u200d\ufeff\u2060",
    "\u3164\u3164",
    "\u2800 \u2800",
    "\u00a0\u2003\u3000",
    "\u2028\u2029",
    "\u0301\u0302",
    "\ufe0f\u180e\u115f",
    " \t\n",
]


def wait_for(condition: Callable[[], bool], timeout: float = WAIT_BOUND_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(0.05)


def fn_indices(server: Any) -> dict[str, int]:
    """The page's events by name, as the browser reads them from /config."""
    config = httpx.get(f"{server.url}config", timeout=30).json()
    return {d["api_name"]: d["id"] for d in config["dependencies"] if d.get("api_name")}


def join(client: httpx.Client, fn_index: int, session: str, data: list[Any]) -> httpx.Response:
    return client.post(
        "/gradio_api/queue/join",
        json={"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None},
    )


def run_direct(client: httpx.Client, fn_index: int, session: str, data: list[Any] | None = None) -> httpx.Response:
    """An event off the queue, called as the front end calls it (``/gradio_api/run/predict``)."""
    body = {"data": data or [], "fn_index": fn_index, "session_hash": session, "event_data": None}
    return client.post("/gradio_api/run/predict", json=body)


def stream_body(port: int, path: str, total: int, *, chunked: bool) -> tuple[bytes, int]:
    """POST a ``total``-byte body in 64 KiB pieces over a raw socket, stopping as soon as the server answers or
    closes; returns the answer's first bytes (empty if the connection was reset before they could be read) and
    how many body bytes went out."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
    sock.sendall(head.encode())
    piece = b'{"data": ["' + b"x" * (PIECE - 11)
    sent = 0
    try:
        while sent < total and not select.select([sock], [], [], 0.002)[0]:
            chunk = piece[: total - sent]
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            sent += len(chunk)
            piece = b"x" * PIECE
    except (BrokenPipeError, ConnectionResetError):
        pass
    try:
        answer = sock.recv(4096)
    except (ConnectionResetError, TimeoutError):
        answer = b""
    sock.close()
    return answer, sent


def rss_mib() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / MIB


class SlowEngine(LocalEngine):
    """The real engine with a pause after every step, so a job lasts long enough to be dropped while it runs;
    records each job's prompt and steps done."""

    step_delay = 0.05

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.jobs: list[dict[str, Any]] = []

    def generate(self, request: Any, on_step: Any = None, should_stop: Any = None, on_phase: Any = None) -> Any:
        record = {"prompt": request.prompt, "steps": 0, "total": request.num_inference_steps}
        self.jobs.append(record)

        def slow_step(done: int, total: int) -> None:
            record["steps"] = done
            time.sleep(self.step_delay)
            if on_step is not None:
                on_step(done, total)

        return super().generate(request, slow_step, should_stop, on_phase)


# ---- 1. bounded requests --------------------------------------------------------------------------------------


def test_ten_streamed_100_mb_bodies_are_cut_off_early_and_memory_stays_at_its_idle_level(server, caplog):
    caplog.set_level(logging.INFO, logger="glmimage")
    port = server.settings.port
    idle = rss_mib()
    answers, sent = [], []
    for n in range(BODIES):
        # Half declare their size, half are chunked (no Content-Length to refuse them by).
        answer, pushed = stream_body(port, "/gradio_api/queue/join", BODY_BYTES, chunked=n % 2 == 0)
        answers.append(answer[:12])
        sent.append(pushed)
    after = rss_mib()
    print(
        f"\n{BODIES} x 100 MB bodies: at most {max(sent) / MIB:.1f} MiB pushed before the cut-off; "
        f"RSS {idle:.0f} -> {after:.0f} MiB; answers {answers}"
    )
    # Each was refused (the 413 can be lost to the reset that ends a connection with unread data; the log is not).
    assert caplog.text.count("edge.too_large") == BODIES
    assert all(a in (b"HTTP/1.1 413", b"") for a in answers) and answers.count(b"HTTP/1.1 413") >= BODIES // 2
    assert max(sent) < CUT_OFF_BOUND_BYTES
    assert after - idle < MEMORY_BOUND_MIB
    assert call(http_client(server.url), request_kwargs(num_inference_steps=1)).kind == "image"


def test_a_body_just_under_the_limit_is_read_and_one_over_it_is_refused(server):
    client = http_client(server.url)
    padding = " " * (limits.MAX_REQUEST_BODY_BYTES - 200)
    ok = submit(client, body=json.dumps({"data": []}) + padding)
    assert 400 <= ok.status_code < 500 and ok.status_code != 413  # read to the end; Gradio refuses the values
    too_big = submit(client, body=json.dumps({"data": []}) + padding + " " * 400)
    assert too_big.status_code == 413
    assert too_big.json()["detail"] == f"The request is too large: at most {limits.MAX_REQUEST_BODY_BYTES // 1024} KB."


@pytest.mark.parametrize(
    "session_hash, status",
    [
        ("a" * 37, 400),  # longer than gradio_client's uuid4 (36)
        ("../../etc", 400),
        ("abc def", 400),
        ("x" * 2_000_000, 413),  # the 2 MB session ids that cost 311 MiB: refused by the body limit first
    ],
)
def test_session_ids_other_than_gradios_own_format_are_refused(server, session_hash, status):
    response = submit(http_client(server.url), request_kwargs(num_inference_steps=1), session_hash=session_hash)
    assert response.status_code == status, response.text[:200]
    assert session_hash not in server.app.demo.state_holder.session_data


def test_gradios_own_session_ids_are_accepted(server):
    browser_like = "k3x9q0v2m1a"  # Math.random().toString(36).substring(2)
    client_like = "0f8b7c1e-9d7a-4c43-8f0e-2b6f0c3d9a11"  # str(uuid.uuid4()), gradio_client
    for session_hash in (browser_like, client_like):
        outcome = call(http_client(server.url), request_kwargs(num_inference_steps=1), session_hash=session_hash)
        assert outcome.kind == "image"


# ---- 2. uploads only where a feature needs them ----------------------------------------------------------------


def files_outside_glmimage(temp: Path) -> set[Path]:
    return {p for p in files_in(temp) if "glmimage" not in p.relative_to(temp).parts}


def test_the_recording_route_is_refused_uploads_are_bounded_and_no_unused_or_aborted_upload_stays(server):
    # Uploads are open (pictures, to read their parameters or to edit) but bounded; recordings are never taken.
    temp = Path(os.environ["GRADIO_TEMP_DIR"])
    before = files_outside_glmimage(temp)
    client = http_client(server.url)
    recording = client.post("/gradio_api/process_recording", files={"video": ("v.mp4", b"x" * 5000)})
    assert recording.status_code == 403
    assert recording.json()["detail"] == "Recordings are not accepted: no part of this page records sound or video."
    over = server.settings.max_upload_bytes + 1024 * 1024
    too_big = client.post("/gradio_api/upload", files={"files": ("cat.png", b"\x89PNG" + b"x" * over)})
    assert too_big.status_code == 413
    # An upload no request ever uses goes with the edge's sweep of unused uploads (every 10 s, for uploads older
    # than UNUSED_UPLOAD_S; here at once).
    finished = client.post("/gradio_api/upload", files={"files": ("cat.png", b"\x89PNG" + b"x" * 5000)})
    assert finished.status_code == 200 and Path(finished.json()[0]).is_file()
    # An upload aborted midway: headers and a fifth of a declared 5 MB body, then the connection drops.
    sock = socket.create_connection(("127.0.0.1", server.settings.port), timeout=10)
    boundary = "glmboundary"
    sock.sendall(
        (
            f"POST /gradio_api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: {5 * MIB}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n--{boundary}\r\n"
            'Content-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n'
        ).encode()
    )
    try:
        sock.sendall(b"x" * MIB)
    except (BrokenPipeError, ConnectionResetError):
        pass
    sock.close()
    time.sleep(0.5)
    server.app.edge.sweep_unused_uploads(max_age_s=0)
    server.app.edge.sweep_strays(min_age_s=0)  # on schedule: once a stray is a minute old
    assert files_outside_glmimage(temp) == before


def test_stray_upload_files_are_swept_on_schedule_and_the_rest_of_the_folder_is_left_alone(tmp_path):
    old, young = tmp_path / "tmpa1b2c3", tmp_path / "tmpd4e5f6"
    for path in (old, young):
        path.write_bytes(b"half an upload")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    kept = [tmp_path / "0f3c" / "tmpinside.png", tmp_path / "notes.txt"]
    kept[0].parent.mkdir()
    for path in kept:
        path.write_text("a finished upload's folder, or no upload at all")
    (tmp_path / "tmp-link").symlink_to("/etc/passwd")
    assert sweep_upload_leftovers(tmp_path, min_age_s=60) == 1  # on schedule: only what nobody writes any more
    assert not old.exists() and young.exists()
    assert sweep_upload_leftovers(tmp_path, min_age_s=0) == 1  # at shutdown: every stray
    assert not young.exists()
    assert all(path.exists() for path in kept) and (tmp_path / "tmp-link").is_symlink()


def test_stray_upload_files_are_swept_when_a_server_starts_and_when_it_stops(start_server):
    temp = Path(os.environ["GRADIO_TEMP_DIR"])
    aborted = temp / "tmpstart01"
    aborted.write_bytes(b"an upload from a killed server")
    os.utime(aborted, (time.time() - 3600, time.time() - 3600))
    server = start_server()
    wait_for(lambda: not aborted.exists())
    late = temp / "tmpstop0001"
    late.write_bytes(b"an upload cut off by the shutdown")
    server.close()
    assert not late.exists()


@pytest.mark.parametrize(
    "path",
    [
        "/gradio_api/file=http://127.0.0.1:{port}/config",
        "/gradio_api/file=https://example.com/a.png",
        "/gradio_api/file=HTTP://127.0.0.1:{port}/config",
        "/gradio_api/file=http%3A%2F%2F127.0.0.1%3A{port}%2Fconfig",
        "/gradio_api/file/http://127.0.0.1:{port}/config",
        "/gradio_api/proxy=https://someone.hf.space/config",
    ],
)
def test_files_are_never_fetched_from_other_sites(server, path):
    response = http_client(server.url).get(path.format(port=server.settings.port))
    assert response.status_code == 403
    assert response.json()["detail"] == "Files from other sites are not fetched."


# ---- 3. sessions cost an attacker, not a visitor ---------------------------------------------------------------


def open_page(port: int, session_hash: str) -> socket.socket:
    """A page left open: its heartbeat request, held open (as the browser does for the whole visit)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET /gradio_api/heartbeat/{session_hash} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


def test_new_sessions_from_one_address_are_rate_limited(start_server):
    server = start_server(session_rate_limit="5/minute")
    load = fn_indices(server)["show_status"]
    flooder = http_client(server.url, source="127.0.0.20")
    statuses = [run_direct(flooder, load, f"flood{n}").status_code for n in range(8)]
    assert statuses == [200] * 5 + [429] * 3
    refused = run_direct(flooder, load, "flood-more")
    assert refused.json()["detail"].startswith("Too many new sessions from your address.")
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    # The limit is per address and per new session: another address, and the flooder's existing sessions, go on.
    assert run_direct(http_client(server.url, source="127.0.0.21"), load, "someone-else").status_code == 200
    assert run_direct(flooder, load, "flood0").status_code == 200


def test_a_flood_of_new_sessions_cannot_evict_a_session_in_use_and_evicted_sessions_lose_their_files_at_once(
    start_server,
):
    max_sessions = 10
    server = start_server(max_sessions=max_sessions)
    demo = server.app.demo
    visitor = server.client(download_files=False)  # keeps its page open (heartbeat), as a browser tab does
    visitor.predict(**request_kwargs(num_inference_steps=1), api_name="/generate")
    wait_for(lambda: ("page", visitor.session_hash) in server.app.edge.open)
    idle = http_client(server.url, source="127.0.0.40")
    assert call(idle, request_kwargs(num_inference_steps=1), session_hash="idle-visitor").kind == "image"
    idle_folder = session_of(demo, "idle-visitor").folder
    assert idle_folder.is_dir()

    load = fn_indices(server)["show_status"]
    statuses = Counter()
    for address in range(30, 40):  # ten addresses, three new sessions each: three times --max-sessions
        flooder = http_client(server.url, source=f"127.0.0.{address}")
        for n in range(3):
            statuses[run_direct(flooder, load, f"flood-{address}-{n}").status_code] += 1
    assert statuses == {200: 30}  # idle sessions make room for new ones
    assert len(demo.state_holder.session_data) <= max_sessions
    assert len(session_of(demo, visitor.session_hash).history) == 1  # the visitor in use kept their history
    assert "idle-visitor" not in demo.state_holder.session_data
    assert not idle_folder.exists()  # deleted with the session, not an hour later

    # When every session is in use, a new one is refused rather than evicting one of them.
    pages = [open_page(server.settings.port, f"busy{n}") for n in range(max_sessions - 1)]
    try:
        wait_for(lambda: all(("page", f"busy{n}") in server.app.edge.open for n in range(max_sessions - 1)))
        busy = http_client(server.url, source="127.0.0.41")
        for n in range(max_sessions - 1):
            assert run_direct(busy, load, f"busy{n}").status_code == 200
        full = run_direct(http_client(server.url, source="127.0.0.42"), load, "one-too-many")
        assert full.status_code == 503
        assert full.json()["detail"] == "Too many visitors right now. Please try again in a minute."
        assert len(session_of(demo, visitor.session_hash).history) == 1
    finally:
        for sock in pages:
            sock.close()
        visitor.close()


# ---- 4. the queue is for generations ---------------------------------------------------------------------------


def test_a_visitors_generate_is_admitted_while_another_address_floods_cheap_events(start_server):
    server = start_server(max_queue=2)
    events = fn_indices(server)
    attacker = http_client(server.url, source="127.0.0.50", timeout=10)
    assert run_direct(attacker, events["show_status"], "attacker").status_code == 200
    stop_flood = threading.Event()
    joins = Counter()

    def flood() -> None:
        # Cheap page events joined through the queue as fast as one client can, results never read.
        for n in range(400):
            if stop_flood.is_set():
                return
            name = ("clear_history", "new_session")[n % 2]
            joins[join(attacker, events[name], "attacker", [None]).status_code] += 1

    flooder = threading.Thread(target=flood)
    flooder.start()
    try:
        wait_for(lambda: sum(joins.values()) >= 20)
        visitor = http_client(server.url, source="127.0.0.60")
        outcomes = [call(visitor, request_kwargs(num_inference_steps=1, seed=n)).kind for n in range(5)]
    finally:
        stop_flood.set()
        flooder.join(WAIT_BOUND_S)
    print(f"\ncheap-event flood: {dict(joins)} joins; the visitor's 5 Generate presses: {outcomes}")
    assert outcomes == ["image"] * 5
    assert joins[200] >= 20


def test_max_queue_still_caps_generations_waiting(start_server):
    server = start_server(max_queue=2, listener_timeout=60, engine_factory=SlowEngine)
    server.app.engine.step_delay = 0.05
    clients = [http_client(server.url, source=f"127.0.0.{70 + n}") for n in range(4)]
    first = submit(clients[0], request_kwargs(num_inference_steps=60, prompt="running"))
    wait_for(lambda: any(job["steps"] >= 1 for job in server.app.engine.jobs))
    waiting = [submit(c, request_kwargs(num_inference_steps=1)) for c in clients[1:3]]
    refused = submit(clients[3], request_kwargs(num_inference_steps=1))
    assert [r.status_code for r in [first, *waiting, refused]] == [200, 200, 200, 503]
    assert "Queue is full" in refused.text
    for client, response in zip(clients, [first, *waiting], strict=False):
        assert read_events(client, response.json()["event_id"])[-1][0] == "complete"


def test_events_off_the_queue_can_never_run_a_generation(server):
    from glmimage.web.gradio_adapter import event_functions

    events = {f.api_name: f for f in event_functions(server.app.demo)}
    assert events["generate"].queued and events["generate"].group == "gpu"
    off_queue = {name for name, f in events.items() if not f.queued}
    assert {"request_stop", "show_status", "preview", "width_changed", "restore"} <= off_queue
    assert all(events[name].group != "gpu" for name in off_queue)
    client = http_client(server.url)
    # api_open=False: a queued event called directly is refused, by name or by index, whatever the session.
    assert client.post("/gradio_api/run/generate", json={"data": []}).status_code == 404
    index = fn_indices(server)["generate"]
    values = [*as_data(request_kwargs(num_inference_steps=1)), None]
    assert run_direct(client, index, "direct-caller", values).status_code == 404


# ---- 5. GPU time goes to listeners -----------------------------------------------------------------------------


def test_a_job_nobody_listens_to_is_stopped_and_frees_the_worker_within_seconds(start_server, caplog):
    caplog.set_level(logging.INFO, logger="glmimage")
    server = start_server(listener_timeout=1.0, engine_factory=SlowEngine)
    engine = server.app.engine
    engine.step_delay = 0.05
    deaf = http_client(server.url, source="127.0.0.80")
    running = submit(deaf, request_kwargs(prompt="nobody reads me", num_inference_steps=100))
    waiting = submit(deaf, request_kwargs(prompt="nobody reads me either", num_inference_steps=1))
    assert running.status_code == waiting.status_code == 200
    wait_for(lambda: any(j["prompt"] == "nobody reads me" for j in engine.jobs))
    # A listener whose job outlasts the timeout is never dropped.
    listener = http_client(server.url, source="127.0.0.81")
    outcome = call(listener, request_kwargs(prompt="someone reads me", num_inference_steps=40))
    assert outcome.kind == "image"
    deaf_job = next(j for j in engine.jobs if j["prompt"] == "nobody reads me")
    print(f"\nunlistened job: stopped after {deaf_job['steps']} of 100 steps (a step every >= 50 ms)")
    assert deaf_job["steps"] < 100
    assert "nobody reads me either" not in [j["prompt"] for j in engine.jobs]  # dropped before it ran
    assert "dropped a running job nobody listened to" in caplog.text
    assert "dropped a waiting job nobody listened to" in caplog.text
    # A reader who comes too late is told so, instead of waiting for a result that will never come.
    late = deaf.get(f"/gradio_api/call/generate/{running.json()['event_id']}")
    assert late.status_code == 410
    assert late.json()["detail"].startswith("This job was dropped: its result stream did not connect within 1 s")


def test_the_cost_weighted_rate_limit_counts_a_request_as_its_pixels_steps_and_images(server, styles):
    default = validate_request(styles, prompt="a cat")
    assert cost_of(default) == 1
    assert cost_of(validate_request(styles, prompt="a cat", width=512, height=512, num_inference_steps=2)) == 1
    assert cost_of(validate_request(styles, prompt="a cat", num_images=3)) == 3
    biggest = validate_request(styles, prompt="a cat", width=2048, height=1024, num_inference_steps=100, num_images=4)
    assert cost_of(biggest) == 16

    def admitted(by_cost: bool, requests: list[dict[str, Any]]) -> list[bool]:
        settings = Settings(model="tiny", rate_limit="4/minute", rate_limit_by_cost=by_cost)
        service = GenerationService(settings, server.app.engine, styles, lambda: "tiny")
        results = []
        for values in requests:
            try:
                service.admit({**default.to_dict(), **values}, "203.0.113.1", "s1", 0)
                results.append(True)
            except Refused:
                results.append(False)
        return results

    three_images, one = {"num_images": 3}, {}
    assert admitted(True, [three_images, one, one]) == [True, True, False]
    assert admitted(False, [three_images, one, one]) == [True, True, True]
    assert admitted(True, [{**three_images, "width": 2048, "height": 1024, "num_inference_steps": 100}]) == [True]


def test_a_costly_request_is_admitted_only_when_the_window_has_room_for_its_whole_cost(monkeypatch):
    # The limits library's memory storage reads time.time(): a clock the test moves by hand.
    clock = [1_000_000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    limiter = VisitorLimiter(RateLimit.parse("4/minute"))
    assert limiter.hit("ip:a", cost=3) == 0.0
    clock[0] += 10.0
    assert limiter.hit("ip:a", cost=1) == 0.0  # 4 of 4 used
    clock[0] += 10.0  # t=20
    assert limiter.hit("ip:a", cost=1) == pytest.approx(40.0)  # the t=0 hits leave at t=60
    # A request of 4 needs every hit gone: told the first wait, then (one hit still there) the rest.
    assert limiter.hit("ip:a", cost=4) == pytest.approx(40.0)
    clock[0] += 40.5  # t=60.5
    assert limiter.hit("ip:a", cost=4) == pytest.approx(9.5)
    assert limiter.hit("ip:a", cost=3) == 0.0  # the t=0 hits have left: 1 + 3 fit
    clock[0] += 5.0  # t=65.5
    assert limiter.hit("ip:a", cost=1) > 0
    clock[0] += 200.0
    assert limiter.hit("ip:a", cost=99) == 0.0  # capped at the limit: it fits in an empty window
    with pytest.raises(ValueError):
        limiter.hit("ip:a", cost=0)


# ---- 6. quiet logs ---------------------------------------------------------------------------------------------


BAD_CALLS = [
    ("POST", "/gradio_api/queue/join", {"data": [], "fn_index": 9999, "session_hash": "abc"}),
    ("POST", "/gradio_api/queue/join", {"data": [1, 2, 3], "fn_index": 0, "session_hash": "abc"}),
    ("POST", "/gradio_api/call/no_such_api", {"data": []}),
    ("POST", "/gradio_api/call/v2/no_such_api", {}),
    ("POST", "/gradio_api/run/no_such_api", {"data": []}),
    ("POST", "/gradio_api/run/predict", {"data": [], "fn_index": 9999, "session_hash": "abc"}),
    ("POST", "/gradio_api/component_server", {"data": 1, "component_id": 99999, "session_hash": "a", "fn_name": "x"}),
    ("GET", "/gradio_api/call/generate/0123456789abcdef0123456789abcdef", None),
    ("GET", "/gradio_api/queue/data?session_hash=nobody", None),
    ("GET", "/gradio_api/heartbeat/" + "a" * 50, None),
    ("GET", "/gradio_api/no_such_route", None),
]


@pytest.fixture(scope="module")
def quiet_server(start_server):
    """A server of its own, so no other test's housekeeping writes to the log meanwhile."""
    return start_server()


@pytest.mark.parametrize("method, path, body", BAD_CALLS)
def test_unknown_endpoints_events_and_jobs_get_a_4xx_and_at_most_one_short_log_line(
    quiet_server, capfd, caplog, method, path, body
):
    caplog.set_level(logging.INFO)
    capfd.readouterr()
    caplog.clear()
    response = http_client(quiet_server.url, timeout=10).request(method, path, json=body)
    time.sleep(0.3)  # anything the server would print after answering
    out, err = capfd.readouterr()
    lines = [r.getMessage() for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    assert 400 <= response.status_code < 500, response.text[:200]
    assert "Traceback" not in out + err + "\n".join(lines)
    assert len(lines) <= 1, lines
    assert all(len(line) < 120 for line in lines), lines


# ---- 7. security headers ---------------------------------------------------------------------------------------


def check_headers(response: httpx.Response, frame_ancestors: str = "'self'") -> str:
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    policy = response.headers["content-security-policy"]
    assert f"frame-ancestors {frame_ancestors}" in policy
    assert "script-src 'self'" in policy
    # No inline script without the nonce, and no eval.
    scripts = policy.split("script-src")[1].split(";")[0]
    assert "unsafe-inline" not in scripts and "unsafe-eval" not in scripts
    return policy


def test_security_headers_are_on_the_page_the_api_files_and_refusals(server):
    client = http_client(server.url)
    page = client.get("/")
    policy = check_headers(page)
    nonce = re.search(r"'nonce-([^']+)'", policy).group(1)
    scripts = re.findall(rb"<script[^>]*>", page.content)
    assert scripts and all(f'nonce="{nonce}"'.encode() in tag for tag in scripts)
    assert nonce not in check_headers(client.get("/"))  # a new nonce for every page
    assert page.headers["x-frame-options"] == "SAMEORIGIN"
    outcome = call(client, request_kwargs(num_inference_steps=1))
    image = client.get(outcome.data[0][0]["image"]["url"])
    refused = submit(client, request_kwargs(prompt=""))
    for response in (
        client.get("/config"),
        client.get("/gradio_api/info"),
        client.get("/healthz"),
        image,
        refused,
        client.get("/no/such/page"),
        client.post("/gradio_api/upload"),
    ):
        assert "'nonce-" not in check_headers(response)  # only an HTML page carries inline scripts
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")


def test_frame_ancestors_defaults_to_self_allows_huggingface_on_a_space_and_refuses_header_injection():
    assert load_settings([], environ={}).frame_ancestors == "'self'"
    on_space = {"SPACE_ID": "someone/glm-image"}
    assert load_settings([], environ=on_space).frame_ancestors == "'self' https://huggingface.co"
    chosen = {**on_space, "GLMIMAGE_FRAME_ANCESTORS": "'none'"}
    assert load_settings([], environ=chosen).frame_ancestors == "'none'"
    assert load_settings(["--frame-ancestors", "https://*.example.org"], environ=on_space).frame_ancestors == (
        "https://*.example.org"
    )
    for bad in ("'self'; script-src *", "*", "https://a.org,https://b.org", "'none' 'self'", "", "javascript:x"):
        with pytest.raises(ValueError, match="frame-ancestors"):
            load_settings(["--frame-ancestors", bad], environ={})


def test_frame_ancestors_follows_the_setting(start_server):
    server = start_server(frame_ancestors="'self' https://huggingface.co")
    response = http_client(server.url).get("/")
    check_headers(response, "'self' https://huggingface.co")
    assert "x-frame-options" not in response.headers  # it cannot name two origins


# ---- 8. prompts ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", INVISIBLE_PROMPTS)
def test_prompts_of_invisible_characters_only_are_refused_as_empty(server, styles, prompt):
    with pytest.raises(InputError) as refused:
        validate_request(styles, prompt=prompt)
    assert refused.value.key == "error.empty_prompt"
    outcome = call(http_client(server.url), request_kwargs(prompt=prompt))
    assert outcome.messages == {"prompt": "Please enter a prompt: it is empty."}


@pytest.mark.parametrize("prompt", ["e\u0301", "👩\u200d👩\u200d👧", "\u200b猫", "a\u3164b"])
def test_prompts_with_something_visible_are_accepted(styles, prompt):
    assert validate_request(styles, prompt=prompt).prompt == prompt
