"""No file outside Gradio's temporary folder can be read over HTTP: absolute paths, ``..`` traversal, URL-encoded
and double-encoded variants, NUL bytes, and symlinks planted inside the temporary folder are all refused. And
the server exposes no more than it must: loopback by default, no share tunnel, no queue bypass, no internals.

Requests go out through ``http.client``, which sends each path byte for byte (httpx would resolve ``..``).
"""

from __future__ import annotations

import http.client
import os
from pathlib import Path

import psutil
import pytest
from conftest import request_kwargs
from rawhttp import http_client

import glmimage
from glmimage.config import load_settings

REPO = Path(glmimage.__file__).resolve().parent.parent
PASSWD_MARKERS = (b"root:x:0:0", b"root:*:0:0", b"/bin/bash", b"/usr/sbin/nologin")


def get(server, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(server.settings.host, server.settings.port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def planted(server) -> dict[str, str]:
    """Symlinks an attacker would hope for, inside the temporary folder and inside this app's own folder."""
    temp = Path(os.environ["GRADIO_TEMP_DIR"])
    own = Path(server.app.files_root)
    own.mkdir(parents=True, exist_ok=True)
    links = {
        "temp_file_link": temp / "passwd-link.txt",
        "own_file_link": own / "passwd-link.png",
        "temp_dir_link": temp / "etc-link",
    }
    for name, link in links.items():
        link.unlink(missing_ok=True)
        link.symlink_to("/etc" if name == "temp_dir_link" else "/etc/passwd")
    allowed = own / "allowed.txt"
    allowed.write_text("served on purpose")
    yield {
        **{name: str(link) for name, link in links.items()},
        "allowed": str(allowed),
        "temp": str(temp),
        "own": str(own),
    }
    for link in links.values():
        link.unlink(missing_ok=True)


ATTEMPTS = [
    "/gradio_api/file=/etc/passwd",
    "/gradio_api/file=../../../../../../etc/passwd",
    "/gradio_api/file=..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/gradio_api/file=%2Fetc%2Fpasswd",
    "/gradio_api/file=%252Fetc%252Fpasswd",
    "/gradio_api/file=%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/gradio_api/file=..\\..\\..\\..\\..\\etc\\passwd",
    "/gradio_api/file=/etc/passwd%00.png",
    "/gradio_api/file=file:///etc/passwd",
    "/gradio_api/file=//etc/passwd",
    "/gradio_api/file={temp}/../../../../../etc/passwd",
    "/gradio_api/file={temp}/..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/gradio_api/file={own}/../../../../../../../etc/passwd",
    "/gradio_api/file={temp_file_link}",
    "/gradio_api/file={own_file_link}",
    "/gradio_api/file={temp_dir_link}/passwd",
    "/gradio_api/file=/proc/self/environ",
    "/gradio_api/file=/proc/self/cmdline",
    "/gradio_api/file={repo}/app.py",
    "/gradio_api/file={repo}/glmimage/config.py",
    "/file=/etc/passwd",
    "/file=../../../../etc/passwd",
    "/gradio_api/static/../../../../etc/passwd",
    "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/assets/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/gradio_api/file/etc/passwd",
    "/../../../../etc/passwd",
    "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
]


@pytest.mark.parametrize("attempt", ATTEMPTS)
def test_files_outside_the_temporary_folder_cannot_be_read(server, planted, attempt):
    status, body = get(server, attempt.format(repo=REPO, **planted))
    assert status in (400, 403, 404, 405), (status, body[:200])
    assert not any(marker in body for marker in PASSWD_MARKERS)
    assert b"GRADIO_TEMP_DIR=" not in body and b"import " not in body


def test_the_same_route_serves_files_of_the_temporary_folder(server, planted):
    # The control: the paths above are refused for what they point at, not because the route is wrong.
    status, body = get(server, f"/gradio_api/file={planted['allowed']}")
    assert (status, body) == (200, b"served on purpose")
    images, _, _ = server.client().predict(**request_kwargs(num_inference_steps=1), api_name="/generate")
    status, body = get(server, f"/gradio_api/file={images[0]['image']}")
    assert status == 200 and body.startswith(b"\x89PNG")


def test_defaults_bind_loopback_only_with_no_share_tunnel(server):
    assert load_settings([], environ={}).host == "127.0.0.1"
    listening = [
        c.laddr
        for c in psutil.Process().net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == server.settings.port
    ]
    assert [address.ip for address in listening] == ["127.0.0.1"]
    demo = server.app.demo
    assert demo.share is False and demo.share_url is None
    assert demo.show_error is False  # unexpected exceptions show no text of their own


def test_the_queue_cannot_be_bypassed_through_the_run_route(server):
    # api_open=False: /gradio_api/run/<name> would otherwise skip the queue, the validator and the rate limit.
    response = http_client(server.url).post("/gradio_api/run/generate", json={"data": []})
    assert response.status_code == 404


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/no/such/page"),
        ("DELETE", "/healthz"),
        ("GET", "/gradio_api/x"),
        ("POST", "/gradio_api/call/no_such_api"),
    ],
)
def test_error_pages_carry_no_stack_trace_or_internal_path(server, method, path):
    response = http_client(server.url).request(method, path, json={"data": []})
    # An unknown API name is a 500 from Gradio itself (FnIndexInferError): refused all the same.
    assert response.status_code >= 400
    for marker in ("Traceback", 'File "', str(REPO), "site-packages", os.environ["GRADIO_TEMP_DIR"]):
        assert marker not in response.text
