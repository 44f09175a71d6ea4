"""/read_parameters and Variations through the running server (tiny model): what API clients and the page's queue
see. The picture round trip (/generate, then /read_parameters, then "Use these settings" and /generate again), a
hand-made AUTOMATIC1111 PNG, refusals in the visitor's language, nothing of a read file left behind, and which
queue each event waits in."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import gradio as gr
import httpx
import numpy as np
import pytest
from conftest import copies_of, request_kwargs
from gradio_client import handle_file
from gradio_client.exceptions import AppError, ValidationError
from PIL import Image, PngImagePlugin

from glmimage.service import API_FIELDS
from glmimage.web import gradio_adapter as adapter
from glmimage.web import handlers


def a1111_png(path: Path, text: str) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (16, 16), "green").save(path, format="PNG", pnginfo=info)
    return path


def pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture
def client(server):
    return server.client()


def test_the_api_offers_read_parameters_with_one_parameter_named_image(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert [p["parameter_name"] for p in endpoints["/read_parameters"]["parameters"]] == ["image"]
    assert "/variations" not in endpoints  # the page's own button, not an API


def test_a_generated_picture_reads_back_exactly_and_its_settings_redraw_the_same_pixels(server, client, tmp_path):
    asked = request_kwargs(
        prompt="round-trip-canary 一只橘猫 on a windowsill", negative_prompt="blurry", style="anime", seed=90210
    )
    images, seed, _ = client.predict(**asked, api_name="/generate")
    original = images[0]["image"]
    data = Path(original).read_bytes()
    copies_before = copies_of(data)

    found = client.predict(image=handle_file(original), api_name="/read_parameters")

    assert found == {
        "prompt": asked["prompt"],
        "negative_prompt": "blurry",
        "style": "anime",
        "seed": 90210,
        "width": 512,
        "height": 512,
        "num_inference_steps": 2,
        "guidance_scale": 3.5,
        "model": "tiny",
    }
    # The upload is gone again (the only copies left are the ones that existed before the call), and so are
    # Gradio's notes of it.
    assert copies_of(data) == copies_before
    notes = [*server.app.demo.upload_file_set, *server.app.context.page.read_file.temp_files]
    assert [note for note in notes if not Path(note).exists()] == []

    # "Use these settings", then Generate with the controls as they now are: the same picture.
    ctx = server.app.context
    shown = handlers.use_read_parameters(ctx, found, gr.Request(headers={"accept-language": "en"}))
    controls = dict(zip(API_FIELDS, ctx.page.request_inputs, strict=True))
    again = {name: shown.get(control, asked.get(name)) for name, control in controls.items()}
    assert again["randomize_seed"] is False and again["num_images"] == 1
    redrawn, _, _ = client.predict(**again, api_name="/generate")
    assert np.array_equal(pixels(redrawn[0]["image"]), pixels(original))


def test_a_hand_made_automatic1111_png_is_read_through_the_api(client, tmp_path):
    text = (
        "masterpiece, a lighthouse in a storm\nwith gulls\nNegative prompt: lowres, bad anatomy\n"
        'Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 3141592653, Size: 832x1216, Model: "my, model"'
    )
    found = client.predict(image=handle_file(a1111_png(tmp_path / "a1111.png", text)), api_name="/read_parameters")
    assert found == {
        "prompt": "masterpiece, a lighthouse in a storm\nwith gulls",
        "negative_prompt": "lowres, bad anatomy",
        "seed": 3141592653,
        "width": 832,
        "height": 1216,
        "num_inference_steps": 28,
        "guidance_scale": 6.5,
        "model": "my, model",
    }


@pytest.mark.parametrize(
    "language, words", [("en-US", "This file is not a PNG picture"), ("zh-CN", "该文件不是 PNG 图片")]
)
def test_a_file_that_is_not_a_picture_is_refused_in_the_visitors_language(server, tmp_path, language, words):
    text_file = tmp_path / "notes.png"
    text_file.write_bytes(b"a shopping list, not a picture")
    with pytest.raises(AppError, match=words):
        server.client(headers={"Accept-Language": language}).predict(
            image=handle_file(text_file), api_name="/read_parameters"
        )
    assert copies_of(text_file.read_bytes()) == []


def test_naming_a_file_on_the_server_instead_of_uploading_one_reads_and_deletes_nothing(server, client):
    client.predict(**request_kwargs(), api_name="/generate")
    (session,) = adapter.session_values(server.app.demo, client.session_hash)
    theirs = next(session.folder.glob("*.png"))  # a visitor's generated image, kept for its history
    body = {"data": [{"path": str(theirs), "meta": {"_type": "gradio.FileData"}}]}
    with httpx.Client(base_url=server.url, timeout=60) as http:
        event = http.post("/gradio_api/call/read_parameters", json=body).json()["event_id"]
        answer = http.get(f"/gradio_api/call/read_parameters/{event}").text
    assert "event: error" in answer and "No picture arrived" in answer
    assert theirs.is_file()


# ---- queues: Variations waits with (and counts as) the GPU's jobs, reading a picture does not ----------------------


class PageEvents:
    """One visitor's page, firing events the way the browser does (``POST /gradio_api/queue/join``)."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url.rstrip("/"), timeout=120)
        self.session_hash = uuid.uuid4().hex[:11]
        config = self.http.get("/config").json()
        self.dependencies = config["dependencies"]
        self.id_of = {c["props"].get("elem_id"): c["id"] for c in config["components"] if c["props"].get("elem_id")}
        self.elem_of = {cid: elem for elem, cid in self.id_of.items()}

    def fire(self, elem_id: str, event: str, **inputs: Any) -> str:
        target = self.id_of[elem_id]
        dep = next(d for d in self.dependencies if d["backend_fn"] and [target, event] in d["targets"])
        body = {
            "data": [inputs.get(self.elem_of.get(cid, ""), None) for cid in dep["inputs"]],
            "fn_index": dep["id"],
            "session_hash": self.session_hash,
            "event_data": None,
            "trigger_id": target,
        }
        joined = self.http.post("/gradio_api/queue/join", json=body)
        joined.raise_for_status()
        return joined.json()["event_id"]

    def outcomes(self, *event_ids: str) -> dict[str, dict[str, Any]]:
        """The completion message of each event, read from the session's one stream (Gradio ends a session's
        messages when its stream closes, so all are read from one)."""
        done: dict[str, dict[str, Any]] = {}
        with self.http.stream("GET", "/gradio_api/queue/data", params={"session_hash": self.session_hash}) as stream:
            for line in stream.iter_lines():
                message = json.loads(line[5:]) if line.startswith("data:") else {}
                if message.get("msg") == "process_completed" and message.get("event_id") in event_ids:
                    done[message["event_id"]] = message
                    if len(done) == len(event_ids):
                        return done
        raise AssertionError(f"no outcome for {set(event_ids) - set(done)}")


def running(demo, api_name: str) -> bool:
    return any(adapter.event_api_name(event) == api_name for event in adapter.running_events(demo))


def test_variations_hold_the_gpu_and_count_as_a_job_while_reading_a_picture_waits_for_neither(start_server, tmp_path):
    server = start_server(max_jobs_per_client=1, concurrency=1)
    page = PageEvents(server.url)
    controls = {
        "prompt": "a long variation",
        "negative-prompt": "",
        "style": "none",
        "width": 1024,
        "height": 1024,
        "num-images": 2,
        "seed": 0,
        "randomize-seed": True,
        "steps": 100,
        "guidance": 3.5,
    }
    variations = page.fire("variations", "click", **controls)
    deadline = time.monotonic() + 120
    while not running(server.app.demo, "variations"):
        assert time.monotonic() < deadline, "the variations never started"
        time.sleep(0.05)

    # This visitor (same address) already has a GPU job: the variations.
    with pytest.raises(ValidationError, match="You already have 1 generations waiting or running"):
        server.client().predict(**request_kwargs(), api_name="/generate")
    # Reading a picture is answered while the GPU is still busy with the variations.
    picture = a1111_png(tmp_path / "p.png", "a fox\nSteps: 5, CFG scale: 2, Seed: 8, Size: 512x512")
    assert server.client().predict(image=handle_file(picture), api_name="/read_parameters")["seed"] == 8
    assert running(server.app.demo, "variations")

    stop = page.fire("stop", "click")
    assert page.outcomes(stop, variations)[variations]["success"] is True
    assert not running(server.app.demo, "variations")
