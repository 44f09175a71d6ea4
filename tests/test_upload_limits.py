"""Uploads tried as an attacker on 127.0.0.1 would, with bounded loops (issue 16, item 2): limited in size, count and
rate per visitor address; refused before they are stored; and nothing of an upload kept past the request that used
it, the session or the shutdown.

The server runs tiny-glm (an edit takes up to 4 pictures) with ``--max-upload-mb 1`` and ``--upload-rate-limit
6/minute``; visitors are told apart by their loopback source address (``rawhttp.http_client``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from conftest import files_in, free_port
from rawhttp import http_client

from glmimage.config import Settings
from glmimage.web import gradio_adapter as adapter
from glmimage.web import handlers
from glmimage.web.security import UNUSED_UPLOAD_S

MIB = 2**20
UPLOADS = "/gradio_api/upload"
RATE = 6


@pytest.fixture(scope="module")
def glm(start_server):
    return start_server(model="tiny-glm", max_upload_mb=1, upload_rate_limit=f"{RATE}/minute")


def temp_files() -> set[Path]:
    """Files under Gradio's temporary folder other than the server's own generated files."""
    temp = Path(os.environ["GRADIO_TEMP_DIR"])
    return {p for p in files_in(temp) if "glmimage" not in p.relative_to(temp).parts}


def pictures(count: int, size: int = 1000, name: str = "p") -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"{name}{n}.png", b"\x89PNG" + bytes([n]) * size, "image/png")) for n in range(count)]


def test_many_uploads_from_one_address_get_429_after_the_limit_and_others_still_upload(glm):
    attacker = http_client(glm.url, source="127.0.0.81")
    statuses = [attacker.post(UPLOADS, files=pictures(1, name=f"a{n}-")).status_code for n in range(RATE + 4)]
    assert statuses == [200] * RATE + [429] * 4
    refused = attacker.post(UPLOADS, files=pictures(1))
    assert refused.json()["detail"].startswith("Too many uploads from your address. Please try again in ")
    assert 0 < int(refused.headers["retry-after"]) <= 60
    chinese = attacker.post(UPLOADS, files=pictures(1), headers={"accept-language": "zh-CN"})
    assert chinese.json()["detail"].startswith("你的地址上传次数过多")
    assert http_client(glm.url, source="127.0.0.82").post(UPLOADS, files=pictures(1)).status_code == 200
    glm.app.edge.sweep_unused_uploads(max_age_s=0)


def test_a_large_upload_counts_once_per_picture_it_could_hold(glm):
    visitor = http_client(glm.url, source="127.0.0.83")
    assert visitor.post(UPLOADS, files=pictures(4, size=900_000)).status_code == 200  # ~3.6 MB: counts 4
    assert [visitor.post(UPLOADS, files=pictures(1)).status_code for _ in range(3)] == [200, 200, 429]
    glm.app.edge.sweep_unused_uploads(max_age_s=0)


def test_as_many_files_as_an_edit_takes_are_accepted_in_one_upload_and_one_more_is_refused_unstored(glm):
    before = temp_files()
    visitor = http_client(glm.url, source="127.0.0.84")
    accepted = visitor.post(UPLOADS, files=pictures(4, name="ok"))
    assert accepted.status_code == 200 and len(accepted.json()) == 4
    glm.app.edge.sweep_unused_uploads(max_age_s=0)
    assert temp_files() == before
    refused = visitor.post(UPLOADS, files=pictures(5, name="many"))
    assert refused.status_code == 400
    assert refused.json()["detail"] == "Too many files in one upload: at most 4."
    assert temp_files() == before  # the four written before the fifth began were deleted at once, no sweep needed


def test_an_upload_over_the_size_limit_is_refused_before_it_is_stored(glm):
    before = temp_files()
    visitor = http_client(glm.url, source="127.0.0.85")
    # Declared larger than four pictures' worth: refused from its headers, before any byte is read.
    declared = visitor.post(UPLOADS, files=pictures(1, size=5 * MIB))
    assert declared.status_code == 413 and declared.json()["detail"].startswith("The request is too large")
    # A small picture, then one over 1 MB, within the request's bound: refused as the large one streams in.
    mixed = [*pictures(1, name="small"), ("files", ("large.png", b"\x89PNG" + b"x" * (MIB + 10), "image/png"))]
    refused = visitor.post(UPLOADS, files=mixed)
    assert refused.status_code == 413 and refused.json()["detail"] == "A file is too large: at most 1 MB per file."
    assert temp_files() == before


def test_an_upload_nobody_uses_is_deleted_and_one_a_waiting_job_names_is_kept(glm):
    visitor = http_client(glm.url, source="127.0.0.86")
    (path,) = visitor.post(UPLOADS, files=pictures(1, name="unused")).json()
    edge = glm.app.edge
    assert edge.sweep_unused_uploads() == 0 and Path(path).is_file()  # young: its request may be on its way
    assert edge.sweep_unused_uploads(now=time.time() + UNUSED_UPLOAD_S + 1) == 1
    assert not Path(path).exists() and path not in adapter.gradio_uploads(glm.app.demo)
    assert not Path(path).parent.exists()  # the folder Gradio made for it too


def test_nothing_of_a_picture_dropped_on_the_page_outlives_the_session(glm, tmp_path):
    from test_edit_server import noise, upload_file

    ctx = glm.app.context
    session = handlers.Session(ctx.files_root)
    upload = upload_file(glm, noise(tmp_path))
    request = gr.Request(headers={"accept-language": "en"})
    shown = handlers.take_pictures(ctx, [{"image": {"path": upload}}], session, request)
    (picture,) = shown[ctx.page.edit_pictures]
    assert not Path(upload).exists() and Path(picture).is_file()  # Gradio's copy went as soon as it was read
    # "Clear history" and a generation with history off keep the pictures in the box...
    session.clear_history()
    assert Path(picture).is_file()
    # ...the end of the session does not.
    session.dispose()
    assert not Path(picture).exists() and not session.folder.exists()


def test_no_upload_outlives_the_server(tiny_model_path: Any):
    from glmimage.web.server import launch

    settings = Settings(model="tiny", port=free_port(), warmup=False, upload_rate_limit="0", session_rate_limit="0")
    app = launch(settings, block=False)
    url = f"http://127.0.0.1:{settings.port}/"
    (path,) = http_client(url).post(UPLOADS, files=pictures(1, name="left")).json()
    assert Path(path).is_file()
    app.demo.close()
    time.sleep(0.5)
    assert not Path(path).exists()
