"""Each Gradio internal GLM Image relies on (glmimage/web/gradio_adapter.py), checked against the installed Gradio
on a real server: if Gradio renames or reshapes one, its test here fails instead of the app silently going wrong."""

from __future__ import annotations

import time

import pytest
from conftest import request_kwargs
from rawhttp import http_client, read_events, submit

from glmimage.web.gradio_adapter import generation_jobs, logged_in_user, undelivered_results, without_api_info

# htpasswd -nbB -C 5 alice 'correct horse 电池'
HTPASSWD = "alice:$2y$05$vZZWz/LxLGPW1rco5HNO0OsRK7cDt0dHbDWDW7R1NgmwwgCyes.kS\n"


def wait_for(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_generation_jobs_counts_the_waiting_and_the_running_generations(start_server):
    server = start_server(concurrency=1)
    demo = server.app.demo
    assert generation_jobs(demo) == (0, 0)
    first = submit(http_client(server.url, source="127.0.0.41"), request_kwargs(num_inference_steps=20))
    wait_for(lambda: generation_jobs(demo) == (0, 1))
    second = submit(http_client(server.url, source="127.0.0.42"), request_kwargs())
    wait_for(lambda: generation_jobs(demo) == (1, 1))
    assert generation_jobs(demo, api_name="no-such-event") == (0, 0)

    # Finished jobs leave the queue before their result is read; until it is, the result is undelivered.
    wait_for(lambda: generation_jobs(demo) == (0, 0), timeout=120)
    assert undelivered_results(demo) == 2
    for response, source in ((first, "127.0.0.41"), (second, "127.0.0.42")):
        assert read_events(http_client(server.url, source=source), response.json()["event_id"])[-1][0] == "complete"
    wait_for(lambda: undelivered_results(demo) == 0, timeout=10)


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
