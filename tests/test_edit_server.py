"""GLM-Image through the running server (``--model tiny-glm``), as gradio_client and the page's handlers see it:
text-to-image, /edit with one and two pictures, the same seed giving the same pixels (also two jobs at once on two
pipelines), hostile pictures refused with nothing else changed, no metadata reaching the model or anything saved,
nothing of an upload left once its request ends; and /edit refused by CogView4 (``--model tiny``).

One tiny-glm server for the module (its model loads in about a second); 512x512, 2 steps, one torch thread.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
import httpx
import numpy as np
import pytest
from conftest import copies_of, files_in, run_async
from gradio_client import handle_file
from gradio_client.exceptions import AppError, ValidationError
from PIL import Image
from test_images import encode, frames, jpeg_with_gps_and_orientation, photo, png_claiming

from glmimage.engine import LocalEngine
from glmimage.maintenance import Drain
from glmimage.models.families import GLM_IMAGE
from glmimage.service import EDIT_FIELDS, GenerationService
from glmimage.web import gradio_adapter as adapter
from glmimage.web import handlers, wiring

EDIT = dict(width=512, height=512, num_images=1, seed=4321, randomize_seed=False, num_inference_steps=2)
GENERATE = dict(EDIT, negative_prompt="", style="none", guidance_scale=1.5)
PROMPT = "a photo of cat on the table"


class RecordingEngine(LocalEngine):
    """The real engine, noting what each job's pictures hold as the job starts: the copies the model reads."""

    seen: list[dict[str, Any]] = []
    pause_s = 0.0  # after the planning phase begins and after each step: time for a test to press Stop

    def generate(self, request: Any, on_step: Any = None, should_stop: Any = None, on_phase: Any = None) -> Any:
        def phase(name: str) -> None:
            if on_phase is not None:
                on_phase(name)
            time.sleep(self.pause_s if name == "planning" else 0.0)

        def step(done: int, total: int) -> None:
            if on_step is not None:
                on_step(done, total)
            time.sleep(self.pause_s)

        for path in request.images:
            with Image.open(path) as picture:
                RecordingEngine.seen.append(
                    {
                        "path": path,
                        "bytes": Path(path).read_bytes(),
                        "info": dict(picture.info),
                        "exif": picture.getexif(),
                    }
                )
        return super().generate(request, step, should_stop, phase)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """GLM-Image plans with hundreds of tiny AR steps; on a shared 2-core machine two intra-op threads spin against
    each other there (see tests/test_glm_image.py), so this module runs torch on one."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def glm(start_server):
    return start_server(model="tiny-glm", engine_factory=RecordingEngine, max_upload_mb=1)


@pytest.fixture
def client(glm):
    return glm.client()


def picture_file(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def noise(folder: Path, name: str = "photo.png", size: tuple[int, int] = (64, 48), seed: int = 0) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return picture_file(folder, name, encode(Image.fromarray(pixels), "PNG"))


def pixels(item: dict[str, Any]) -> np.ndarray:
    return np.asarray(Image.open(item["image"]).convert("RGB"))


def session_of(server: Any, client: Any) -> Any:
    (session,) = adapter.session_values(server.app.demo, client.session_hash)
    return session


def english() -> gr.Request:
    return gr.Request(headers={"accept-language": "en-US,en;q=0.9"})


# ---- text-to-image and the seed -------------------------------------------------------------------------------


def test_the_api_offers_edit_with_exactly_its_parameters_and_generate_as_before(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert [p["parameter_name"] for p in endpoints["/edit"]["parameters"]] == [
        "prompt",
        "images",
        "width",
        "height",
        "num_images",
        "seed",
        "randomize_seed",
        "num_inference_steps",
        "guidance_scale",
    ]
    assert [p["parameter_name"] for p in endpoints["/generate"]["parameters"]][:3] == [
        "prompt",
        "negative_prompt",
        "style",
    ]
    assert len(endpoints["/edit"]["returns"]) == len(endpoints["/generate"]["returns"]) == 3


def test_text_to_image_draws_the_requested_size_and_the_seed_decides_the_pixels(client):
    images, seed, details = client.predict(prompt=PROMPT, **{**GENERATE, "width": 576}, api_name="/generate")
    assert seed == 4321 and Image.open(images[0]["image"]).size == (576, 512)
    assert details["family"] == "GLM-Image" and details["model"] == "tiny-glm"
    again, _, _ = client.predict(prompt=PROMPT, **{**GENERATE, "width": 576}, api_name="/generate")
    other, _, _ = client.predict(prompt=PROMPT, **{**GENERATE, "width": 576, "seed": 4322}, api_name="/generate")
    assert np.array_equal(pixels(again[0]), pixels(images[0]))
    assert not np.array_equal(pixels(other[0]), pixels(images[0]))


def test_a_negative_prompt_is_refused_naming_glm_image(client):
    with pytest.raises(ValidationError, match="GLM-Image does not take this parameter: Negative prompt"):
        client.predict(prompt=PROMPT, **{**GENERATE, "negative_prompt": "blurry"}, api_name="/generate")


# ---- editing --------------------------------------------------------------------------------------------------


def test_an_edit_of_one_and_of_two_pictures_returns_images_and_keeps_nothing_of_the_pictures(glm, client, tmp_path):
    first, second = noise(tmp_path, "first.png"), noise(tmp_path, "second.png", (48, 96), seed=1)
    one, seed, details = client.predict(prompt=PROMPT, images=[handle_file(first)], **EDIT, api_name="/edit")
    assert seed == 4321 and Image.open(one[0]["image"]).size == (512, 512)
    assert details["parameters"]["reference_images"] == 1 and "images" not in details["parameters"]
    two, _, details = client.predict(
        prompt=PROMPT, images=[handle_file(first), handle_file(second)], **{**EDIT, "num_images": 2}, api_name="/edit"
    )
    assert len(two) == 2 and details["parameters"]["reference_images"] == 2
    # The same seed and pictures give the same pixels.
    again, _, _ = client.predict(prompt=PROMPT, images=[handle_file(first)], **EDIT, api_name="/edit")
    assert np.array_equal(pixels(again[0]), pixels(one[0]))
    # Nothing of the uploads is left: Gradio's copies went when they were read, the clean copies with the request.
    for source in (first, second):
        assert copies_of(source.read_bytes()) == []
    session = session_of(glm, client)
    assert {p.name for p in session.folder.iterdir()} <= {Path(f).name for e in session.history for f in e.files}
    # The history and the log say they were edits, and of how many pictures.
    assert [e.request.get("reference_images") for e in session.history[:3]] == [1, 2, 1]
    assert [e["event"] for e in session.log][-3:] == ["edited"] * 3
    shown = handlers.history_and_log(glm.app.context, session)[glm.app.context.page.history]
    assert shown["value"][0][1].startswith("#4321 · edit of 1 picture(s) · ")


def test_odd_but_valid_pictures_are_converted_and_edited(client, tmp_path):
    animated = encode(frames((255, 0, 0))[0], "PNG", save_all=True, append_images=frames((0, 0, 255)), duration=50)
    sixteen_bit = Image.fromarray(np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (48, 1)))
    cases = {
        "animated.png": animated,
        "cmyk.jpg": encode(Image.new("CMYK", (64, 48), (255, 0, 0, 0)), "JPEG"),
        "grey16.png": encode(sixteen_bit, "PNG"),
    }
    for name, data in cases.items():
        images, _, details = client.predict(
            prompt=PROMPT, images=[handle_file(picture_file(tmp_path, name, data))], **EDIT, api_name="/edit"
        )
        assert len(images) == 1 and details["parameters"]["reference_images"] == 1, name


def test_no_exif_or_gps_reaches_the_model_or_anything_saved(glm, client, tmp_path):
    source = picture_file(tmp_path, "phone.jpg", jpeg_with_gps_and_orientation())
    RecordingEngine.seen.clear()
    images, _, _ = client.predict(prompt=PROMPT, images=[handle_file(source)], **EDIT, api_name="/edit")
    (seen,) = RecordingEngine.seen
    assert len(seen["exif"]) == 0 and "exif" not in seen["info"]
    saved = files_in(Path(os.environ["GRADIO_TEMP_DIR"]))  # other tests' sessions may be cleared meanwhile
    assert Path(images[0]["image"]) in saved
    for data in [seen["bytes"], *saved.values()]:
        # The EXIF block (which holds the GPS position) and the camera's name: in no file at all.
        assert b"Exif\x00\x00" not in data and b"PhoneMaker" not in data
    for path, data in saved.items():
        if path.suffix == ".png":
            with Image.open(io.BytesIO(data)) as image:
                assert len(image.getexif()) == 0 and "exif" not in image.info, path
    assert not Path(seen["path"]).exists()  # the model's copy ended with the request


HOSTILE = [
    ("notes.png", b"a shopping list, not a picture\n" * 4, ValidationError, "Only PNG, JPEG and WebP pictures"),
    ("bomb.png", png_claiming(30000, 30000), ValidationError, "too many pixels: at most 50 megapixels"),
    ("cut.png", encode(photo(), "PNG")[:300], AppError, "damaged or incomplete"),
]


@pytest.mark.parametrize(("name", "data", "error", "words"), HOSTILE, ids=[case[0] for case in HOSTILE])
def test_a_hostile_picture_is_refused_clearly_and_nothing_else_changes(
    glm, client, tmp_path, name, data, error, words
):
    client.predict(prompt=PROMPT, images=[handle_file(noise(tmp_path))], **EDIT, api_name="/edit")
    session = session_of(glm, client)
    history = [entry.id for entry in session.history]
    with pytest.raises(error, match=words):
        client.predict(
            prompt=PROMPT, images=[handle_file(picture_file(tmp_path, name, data))], **EDIT, api_name="/edit"
        )
    assert [entry.id for entry in session.history] == history
    assert copies_of(data) == []
    assert adapter.generation_jobs(glm.app.demo) == (0, 0)
    images, _, _ = client.predict(prompt=PROMPT, images=[handle_file(noise(tmp_path))], **EDIT, api_name="/edit")
    assert len(images) == 1  # the server goes on


def test_a_picture_over_the_size_limit_never_reaches_the_server(glm, client, tmp_path):
    # --max-upload-mb 1: gradio_client reads the limit from the page's config and refuses to send the file; a raw
    # upload is refused by the edge as it streams in (tests/test_upload_limits.py).
    big = picture_file(tmp_path, "big.png", encode(photo(1024, 1024), "PNG"))
    assert big.stat().st_size > 2**20
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        client.predict(prompt=PROMPT, images=[handle_file(big)], **EDIT, api_name="/edit")
    assert copies_of(big.read_bytes()) == []


def test_too_many_pictures_are_refused_before_the_queue_naming_the_limit(glm, client, tmp_path):
    files = [noise(tmp_path, f"p{n}.png", seed=n) for n in range(GLM_IMAGE.max_reference_images + 1)]
    with pytest.raises(ValidationError, match="Too many pictures: 5. GLM-Image takes at most 4."):
        client.predict(prompt=PROMPT, images=[handle_file(f) for f in files], **EDIT, api_name="/edit")
    assert all(copies_of(f.read_bytes()) == [] for f in files)
    with pytest.raises(ValidationError, match="Add at least one picture to edit."):
        client.predict(prompt=PROMPT, images=[], **EDIT, api_name="/edit")


def test_a_path_on_the_server_named_instead_of_an_upload_is_refused_and_left_alone(glm, client):
    client.predict(prompt=PROMPT, **GENERATE, api_name="/generate")
    theirs = next(iter(glm.app.files_root.rglob("*.png")))  # some visitor's picture
    named = [{"path": str(theirs), "meta": {"_type": "gradio.FileData"}}]
    body = {"data": [PROMPT, named, 512, 512, 1, 1, False, 2, 1.5]}
    with httpx.Client(base_url=glm.url, timeout=60) as http:  # raw: gradio_client would upload the file itself
        response = http.post("/gradio_api/call/edit", json=body)
    assert response.status_code == 422 and "A picture did not arrive" in response.text
    assert theirs.is_file()


@pytest.mark.parametrize(
    ("language", "words"),
    [("en-US", "Too many pictures: 5. GLM-Image"), ("zh-CN", "图片太多")],
)
def test_refusals_of_an_edit_come_in_the_visitors_language(glm, tmp_path, language, words):
    files = [noise(tmp_path, f"p{n}.png", seed=n) for n in range(5)]
    with pytest.raises(ValidationError, match=words):
        glm.client(headers={"Accept-Language": language}).predict(
            prompt=PROMPT, images=[handle_file(f) for f in files], **EDIT, api_name="/edit"
        )


def test_an_edit_is_held_to_generates_checks_before_it_queues_and_a_refused_one_keeps_no_upload(glm, tmp_path):
    ctx = glm.app.context
    drain = Drain()
    settings = dataclasses.replace(glm.settings, rate_limit="1/minute")
    service = GenerationService(
        settings, glm.app.engine, ctx.styles, lambda: "tiny-glm", drain=drain, family=GLM_IMAGE
    )
    checked = dataclasses.replace(ctx, service=service)
    visitor = SimpleNamespace(host="203.0.113.9")
    request = gr.Request(headers={"accept-language": "en"}, client=visitor, session_hash="edit-checks")

    def refusals() -> tuple[dict[str, str], str]:
        upload = upload_file(glm, noise(tmp_path))
        values = [PROMPT, [{"path": upload}], 512, 512, 1, 1, False, 2, 1.5]
        results = run_async(wiring.check_edit(checked, *values, handlers.Session(ctx.files_root), request))
        return {name: r["message"] for name, r in zip(EDIT_FIELDS, results, strict=False) if not r["is_valid"]}, upload

    generate_values = dict(GENERATE, prompt=PROMPT, num_inference_steps=2)
    service.admit(generate_values, "203.0.113.9", "edit-checks", 0)  # a Generate takes the one request a minute
    refused, upload = refusals()
    assert list(refused) == ["prompt"] and refused["prompt"].startswith("Too many requests: the limit is 1/minute")
    assert not Path(upload).exists()
    drain.begin()
    refused, upload = refusals()
    assert refused == {"prompt": "The server is restarting. Please try again in a minute."}
    assert not Path(upload).exists()


# ---- progress and Stop -------------------------------------------------------------------------------------------


@pytest.fixture
def paused():
    RecordingEngine.pause_s = 0.4
    yield
    RecordingEngine.pause_s = 0.0


def progress_texts(job: Any, until: Any, timeout: float = 60.0) -> list[str]:
    """The progress the client sees ("Planning the picture…", "step"), polled until ``until(texts)`` holds."""
    texts: list[str] = []
    deadline = time.monotonic() + timeout
    while not until(texts):
        assert time.monotonic() < deadline and not job.done(), texts
        for unit in job.status().progress_data or []:
            text = f"{unit.desc} {unit.index}/{unit.length}" if unit.length else str(unit.desc)
            if not texts or texts[-1] != text:
                texts.append(text)
        time.sleep(0.02)
    return texts


def test_an_edit_shows_planning_then_its_steps_and_stop_ends_it_between_steps(glm, client, paused, tmp_path):
    six_steps = {**EDIT, "num_inference_steps": 6}
    job = client.submit(prompt=PROMPT, images=[handle_file(noise(tmp_path))], **six_steps, api_name="/edit")
    texts = progress_texts(job, lambda seen: any(text.startswith("step 1/6") for text in seen))
    assert texts[0] == "Planning the picture…", texts
    session = session_of(glm, client)
    before = list(session.history)
    handlers.request_stop(session)
    job.result(timeout=60)
    assert session.history == before and session.log[-1]["event"] == "stopped"
    assert session.log[-1]["reason"] == "status.stopped" and session.log[-1]["reference_images"] == 1


def test_stop_while_an_edit_plans_ends_it_before_any_step(glm, client, paused, tmp_path):
    job = client.submit(prompt=PROMPT, images=[handle_file(noise(tmp_path))], **EDIT, api_name="/edit")
    progress_texts(job, lambda seen: "Planning the picture…" in seen)
    session = session_of(glm, client)
    handlers.request_stop(session)
    job.result(timeout=60)
    assert session.log[-1]["event"] == "stopped"
    assert glm.app.engine.recent[-1].steps_done == 0 and glm.app.engine.recent[-1].outcome == "stopped"


# ---- the same seed, the same picture, on two pipelines at once --------------------------------------------------


def test_two_jobs_at_once_on_two_pipelines_give_the_pixels_each_gives_alone(client, start_server, tmp_path):
    source = noise(tmp_path)
    calls = [
        dict(prompt=PROMPT, **{**GENERATE, "seed": 11}, api_name="/generate"),
        dict(prompt="a red cup", images=[handle_file(source)], **{**EDIT, "seed": 12}, api_name="/edit"),
    ]
    alone = [client.predict(**call)[0][0] for call in calls]
    pair = start_server(model="tiny-glm", devices="cpu,cpu")
    assert pair.app.loader.worker_count == 2
    together_client = pair.client()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        jobs = [pool.submit(together_client.predict, **call) for call in calls]
        together = [job.result(timeout=300)[0][0] for job in jobs]
    for one, other in zip(alone, together, strict=True):
        assert np.array_equal(pixels(one), pixels(other))


# ---- the page follows the model ---------------------------------------------------------------------------------


def test_the_page_of_glm_image_has_its_defaults_ranges_and_no_negative_prompt(glm):
    page = glm.app.context.page
    assert page.negative_prompt.visible is False and page.final_negative.visible is False
    assert (page.steps.value, page.steps.minimum, page.steps.maximum) == (30, 1, 100)
    assert (page.guidance.value, page.guidance.maximum) == (1.5, 20.0)
    assert (page.width.value, page.height.value, page.width.step) == (1024, 1024, 32)
    assert page.edit_pictures.visible is True and page.before_after.visible is False


def test_glm_image_sizes_up_to_2048_squared_are_left_as_typed(glm):
    ctx = glm.app.context
    # 2048x2048 is legal for GLM-Image (4 megapixels), so the other side is not lowered as for CogView4.
    assert handlers.width_changed(ctx, 2048, 2048) == {ctx.page.size_preset: "custom"}
    assert handlers.width_changed(ctx, 2048, 2080) == {ctx.page.size_preset: "custom"}


def test_a_picture_dropped_in_the_edit_box_is_taken_in_and_sets_the_size(glm, tmp_path):
    ctx, page = glm.app.context, glm.app.context.page
    session = handlers.Session(ctx.files_root)
    upload = upload_file(glm, noise(tmp_path, size=(96, 64)))
    shown = handlers.take_pictures(ctx, [{"image": {"path": upload}, "caption": None}], session, english())
    (picture,) = shown[page.edit_pictures]
    assert Path(picture).parent == session.folder and session.pictures == [picture]
    assert not Path(upload).exists() and not adapter.is_gradio_upload(glm.app.demo, upload)
    assert (shown[page.width], shown[page.height]) == (768, 512)  # 96x64 fitted to GLM-Image's sizes
    # Another picture added later keeps the first and leaves the size as the visitor set it.
    second = upload_file(glm, noise(tmp_path, "b.png", seed=3))
    value = [{"image": {"path": picture}}, {"image": {"path": second}}]
    shown = handlers.take_pictures(ctx, value, session, english())
    assert shown[page.edit_pictures][0] == picture and len(session.pictures) == 2 and page.width not in shown
    # Taken out of the box: its clean copy goes; the session's end takes the rest.
    handlers.drop_picture(ctx, session, gr.EventData(None, {"file": {"path": picture}, "index": 0}))
    assert session.pictures == shown[page.edit_pictures][1:] and not Path(picture).exists()
    session.dispose()
    assert not session.folder.exists()


def test_restoring_an_edit_puts_its_words_back_in_the_edit_box_and_hides_the_old_comparison(glm, client, tmp_path):
    client.predict(prompt="make the cup red", images=[handle_file(noise(tmp_path))], **EDIT, api_name="/edit")
    ctx, session = glm.app.context, session_of(glm, client)
    shown = handlers.restore(ctx, session, gr.SelectData(None, {"index": 0, "value": None}), english())
    page = ctx.page
    assert shown[page.edit_prompt] == "make the cup red" and page.prompt not in shown
    assert shown[page.seed] == 4321 and shown[page.before_after]["visible"] is False


def test_the_privacy_notice_says_what_happens_to_uploaded_pictures(glm, server):
    notice = handlers.show_status(glm.app.context, english())[glm.app.context.page.privacy_notice]
    assert "rebuilt from their pixels alone" in notice and "GPS" in notice
    chinese = gr.Request(headers={"accept-language": "zh-CN"})
    assert "GPS" in handlers.show_status(glm.app.context, chinese)[glm.app.context.page.privacy_notice]
    assert "GPS" not in handlers.show_status(server.app.context, english())[server.app.context.page.privacy_notice]


def upload_file(server: Any, path: Path) -> str:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        response = http.post("/gradio_api/upload", files={"files": (path.name, path.read_bytes(), "image/png")})
    response.raise_for_status()
    return response.json()[0]


# ---- a model that cannot edit -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("language", "words"),
    [("en-US", "CogView4 draws from text only: it cannot edit pictures."), ("zh-CN", "CogView4 只能根据文字生成图片")],
)
def test_cogview4_refuses_edit_naming_itself_and_keeps_nothing(server, tmp_path, language, words):
    source = noise(tmp_path)
    with pytest.raises(ValidationError, match=words):
        server.client(headers={"Accept-Language": language}).predict(
            prompt=PROMPT, images=[handle_file(source)], **EDIT, api_name="/edit"
        )
    assert copies_of(source.read_bytes()) == []
    # The page shows no Edit controls, and a negative prompt as before.
    sections = [b for b in server.app.demo.blocks.values() if getattr(b, "elem_id", None) == "edit-section"]
    assert [section.visible for section in sections] == [False]
    assert server.app.context.page.negative_prompt.visible is True
