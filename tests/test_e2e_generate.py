"""End to end through gradio_client against the launched app (tiny model, 512x512, 2 steps).

An image of the requested size arrives with the seed and timings; seeds reproduce pixels; Chinese and English
prompts work; every bad input is refused with a message naming the field and the allowed range and changes
nothing else; two clients have separate histories; with concurrency 1, concurrent requests run one at a time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import request_kwargs
from gradio_client.exceptions import ValidationError
from PIL import Image

from glmimage import limits
from glmimage.service import API_FIELDS
from glmimage.sessions import Session
from glmimage.web.gradio_adapter import session_values

TIMING_KEYS = {"queue_s", "load_wait_s", "model_s", "per_step_s", "save_s", "total_s"}
# About 1100 tokens with the tiny byte-level tokenizer, yet under the 4000-character cap: refused by the engine.
OVER_TOKEN_LIMIT = "qz" * 550
CHINESE_PROMPT = "一只可爱的猫坐在沙发上，窗外是夕阳下的湖泊和群山"


def generate(client, **overrides):
    return client.predict(**request_kwargs(**overrides), api_name="/generate")


def pixels(gallery_item: dict) -> np.ndarray:
    return np.asarray(Image.open(gallery_item["image"]).convert("RGB"))


def session_of(server, client) -> Session:
    """The Session object the server keeps in this client's gr.State."""
    return next(value for value in session_values(server.app.demo, client.session_hash) if isinstance(value, Session))


def history_ids(server, client) -> list[str]:
    return [entry.id for entry in session_of(server, client).history]


def server_is_up(server) -> bool:
    return httpx.get(server.url + "healthz", timeout=10).status_code == 200


@pytest.fixture(scope="module")
def client(server):
    return server.client()


@pytest.fixture(scope="module")
def chinese_client(server):
    return server.client(headers={"Accept-Language": "zh-CN"})


@pytest.fixture(scope="module")
def client_with_history(server):
    """A client with one generation in its history, for checking that refusals change nothing."""
    client = server.client()
    generate(client, prompt="the picture that must stay in the history")
    return client


# ---- results -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("width, height", [(512, 512), (768, 512), (544, 800)])
def test_an_image_of_the_requested_size_arrives(client, width, height):
    images, seed, details = generate(client, width=width, height=height)
    assert len(images) == 1
    assert Image.open(images[0]["image"]).size == (width, height)
    assert seed == 1234 and details["seed"] == 1234
    assert details["parameters"]["width"] == width and details["parameters"]["height"] == height
    assert details["model"] == "tiny"


def test_an_api_call_may_leave_out_everything_but_the_prompt_and_gets_the_pages_defaults(client):
    # Size and steps are given only to keep the tiny model fast; negative prompt, style, images, seed and guidance
    # are left out, as a script that only has a prompt would.
    images, seed, details = client.predict(
        prompt="just a prompt", width=512, height=512, num_inference_steps=2, api_name="/generate"
    )
    parameters = details["parameters"]
    assert len(images) == 1 and 0 <= seed < 2**32
    assert parameters["negative_prompt"] == "" and parameters["style"] == "none"
    assert parameters["guidance_scale"] == 3.5 and parameters["num_images"] == 1


def test_the_largest_seed_is_accepted_and_returned_unchanged(client):
    _, seed, details = generate(client, seed=limits.MAX_SEED)
    assert seed == details["seed"] == details["parameters"]["seed"] == 2**32 - 1


def test_as_many_images_arrive_as_asked(client):
    images, _, details = generate(client, num_images=2)
    assert len(images) == 2 and details["parameters"]["num_images"] == 2
    assert all(Image.open(item["image"]).size == (512, 512) for item in images)


def test_timings_are_all_present_and_positive(client):
    _, _, details = generate(client)
    timings = details["timings"]
    assert set(timings) == TIMING_KEYS
    assert all(timings[name] > 0 for name in ("model_s", "per_step_s", "save_s", "total_s"))
    assert timings["queue_s"] >= 0 and timings["load_wait_s"] >= 0
    assert timings["total_s"] >= timings["model_s"]


def test_the_same_seed_gives_identical_pixels_and_another_seed_different_ones(client):
    first = generate(client, seed=77)[0][0]
    again = generate(client, seed=77)[0][0]
    other = generate(client, seed=78)[0][0]
    assert first["image"] != again["image"]  # two files...
    assert np.array_equal(pixels(first), pixels(again))  # ...with the same pixels
    assert not np.array_equal(pixels(first), pixels(other))


def test_a_randomized_seed_is_returned_and_reusing_it_reproduces_the_pixels(client):
    images, seed, details = generate(client, seed=0, randomize_seed=True)
    assert isinstance(seed, int) and 0 <= seed <= limits.MAX_SEED
    assert details["seed"] == seed and details["parameters"]["randomize_seed"] is True
    replay, replay_seed, _ = generate(client, seed=seed, randomize_seed=False)
    assert replay_seed == seed
    assert np.array_equal(pixels(images[0]), pixels(replay[0]))
    _, another_seed, _ = generate(client, seed=0, randomize_seed=True)
    assert another_seed != seed


def test_an_english_prompt_reaches_the_model_as_written(client):
    _, _, details = generate(client, prompt="a lighthouse on a cliff at dawn", negative_prompt="blurry")
    assert details["final_prompt"] == "a lighthouse on a cliff at dawn"
    assert details["final_negative_prompt"] == "blurry"


def test_a_chinese_prompt_generates_an_image_and_reaches_the_model_unchanged(client):
    images, _, details = generate(client, prompt=CHINESE_PROMPT, negative_prompt="模糊,低质量")
    assert Image.open(images[0]["image"]).size == (512, 512)
    assert details["final_prompt"] == CHINESE_PROMPT and details["parameters"]["prompt"] == CHINESE_PROMPT
    assert details["final_negative_prompt"] == "模糊,低质量"


def test_a_style_wraps_the_chinese_prompt_and_adds_its_negative_prompt(client, styles):
    style_id = styles.ids[1]
    _, _, details = generate(client, prompt=CHINESE_PROMPT, style=style_id)
    expected = styles.apply(style_id, CHINESE_PROMPT, "")
    assert details["final_prompt"] == expected.prompt and CHINESE_PROMPT in details["final_prompt"]
    assert details["final_negative_prompt"] == expected.negative_prompt


# ---- bad input: refused with the field and the allowed range, nothing else changes ---------------------------------

# (overrides, the API field named, words the message must contain: the rule or the allowed range)
BAD_INPUTS = [
    (dict(prompt=""), "prompt", ["empty"]),
    (dict(prompt="  \n\t  "), "prompt", ["empty"]),
    (dict(prompt="x" * (limits.MAX_PROMPT_CHARS + 1)), "prompt", ["4000"]),
    (dict(width=520), "width", ["multiples of 32"]),
    (dict(height=1000), "width", ["multiples of 32"]),
    (dict(width=480), "width", ["from 512 to 2048"]),
    (dict(width=2080), "width", ["from 512 to 2048"]),
    (dict(height=256), "height", ["from 512 to 2048"]),
    (dict(height=4096), "height", ["from 512 to 2048"]),
    (dict(width=2048, height=2048), "width", ["at most 2097152 pixels"]),
    (dict(width=1536, height=1536), "width", ["at most 2097152 pixels"]),
    (dict(num_inference_steps=0), "num_inference_steps", ["from 1 to 100"]),
    (dict(num_inference_steps=101), "num_inference_steps", ["from 1 to 100"]),
    (dict(guidance_scale=-0.5), "guidance_scale", ["from 0.0 to 20.0"]),
    (dict(guidance_scale=20.5), "guidance_scale", ["from 0.0 to 20.0"]),
    (dict(seed=-1), "seed", ["from 0 to 4294967295"]),
    (dict(seed=2**32), "seed", ["from 0 to 4294967295"]),
    (dict(seed=1.5), "seed", ["whole number from 0 to 4294967295"]),
    (dict(seed="lucky"), "seed", ["whole number from 0 to 4294967295"]),
    (dict(num_images=0), "num_images", ["from 1 to 4"]),
    (dict(num_images=5), "num_images", ["from 1 to 4"]),
    (dict(style="no-such-style"), "style", ["no-such-style", "list"]),
]


@pytest.mark.parametrize(
    "overrides, field, words", BAD_INPUTS, ids=[f"{field}={str(o)[:30]}" for o, field, _ in BAD_INPUTS]
)
def test_bad_input_is_refused_naming_the_field_and_range_and_changes_nothing(
    server, client_with_history, overrides, field, words
):
    before = history_ids(server, client_with_history)
    with pytest.raises(ValidationError) as caught:
        generate(client_with_history, **overrides)
    message = str(caught.value)
    assert f"- {field}:" in message, message
    for word in words:
        assert word in message, f"{word!r} missing from {message!r}"
    assert before and history_ids(server, client_with_history) == before
    assert session_of(server, client_with_history).log[-1]["event"] == "refused"
    assert server_is_up(server)


def test_a_prompt_over_the_model_token_limit_is_refused_before_queuing_naming_the_limit(server, client_with_history):
    before = history_ids(server, client_with_history)
    with pytest.raises(ValidationError) as caught:
        generate(client_with_history, prompt=OVER_TOKEN_LIMIT)
    message = str(caught.value)
    assert "Prompt" in message and "1024" in message and "tokens" in message
    assert history_ids(server, client_with_history) == before
    last = session_of(server, client_with_history).log[-1]
    assert (last["event"], last["reason"]) == ("refused", "error.too_many_tokens")
    assert server_is_up(server)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_a_guidance_that_is_not_a_finite_number_is_refused_over_raw_http(server, token):
    """gradio_client will not send NaN or infinity; a hand-written JSON body can."""
    kwargs = request_kwargs()
    values = [token if name == "guidance_scale" else json.dumps(kwargs[name]) for name in API_FIELDS]
    response = httpx.post(
        server.url + "gradio_api/call/generate",
        content='{"data": [' + ",".join(values) + "]}",
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 422
    refused = [item for item in response.json()["detail"] if not item["is_valid"]]
    assert [item["parameter_name"] for item in refused] == ["guidance_scale"]
    assert "from 0.0 to 20.0" in refused[0]["message"]
    assert server_is_up(server)


def test_after_every_refusal_the_same_client_still_generates_and_its_history_grows(server, client_with_history):
    before = history_ids(server, client_with_history)
    images, _, _ = generate(client_with_history, prompt="after the refusals")
    assert len(images) == 1
    after = history_ids(server, client_with_history)
    assert len(after) == len(before) + 1 and after[1:] == before


# ---- Chinese messages ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, field, chinese",
    [
        (dict(prompt="   "), "prompt", "请输入提示词"),
        (dict(width=480), "width", "宽度必须在 512 到 2048 之间"),
        (dict(width=528), "width", "32 的倍数"),
        (dict(num_inference_steps=101), "num_inference_steps", "步数必须在 1 到 100 之间"),
        (dict(seed=-1), "seed", "4294967295"),
        (dict(style="no-such-style"), "style", "未知风格"),
    ],
)
def test_messages_come_in_chinese_for_a_chinese_browser(chinese_client, overrides, field, chinese):
    with pytest.raises(ValidationError) as caught:
        generate(chinese_client, **overrides)
    message = str(caught.value)
    assert f"- {field}:" in message and chinese in message, message


def test_the_token_limit_message_comes_in_chinese_for_a_chinese_browser(chinese_client):
    with pytest.raises(ValidationError) as caught:
        generate(chinese_client, prompt=OVER_TOKEN_LIMIT)
    assert "词元" in str(caught.value) and "1024" in str(caught.value)


def test_an_english_browser_gets_the_same_refusal_in_english(client):
    with pytest.raises(ValidationError) as caught:
        generate(client, width=480)
    assert "Width must be from 512 to 2048 (got 480)" in str(caught.value)


# ---- sessions and the queue ------------------------------------------------------------------------------------


def test_two_clients_have_separate_histories(server):
    first, second = server.client(), server.client()
    for n in (1, 2):
        generate(first, prompt=f"apple {n}", seed=n)
    generate(second, prompt=CHINESE_PROMPT, seed=3)
    assert first.session_hash != second.session_hash
    first_session, second_session = session_of(server, first), session_of(server, second)
    assert first_session is not second_session and first_session.folder != second_session.folder
    assert [e.request["prompt"] for e in first_session.history] == ["apple 2", "apple 1"]
    assert [e.request["prompt"] for e in second_session.history] == [CHINESE_PROMPT]
    for session in (first_session, second_session):
        for entry in session.history:
            assert Path(entry.files[0]).parent == session.folder
            assert Image.open(entry.files[0]).size == (512, 512)


def test_with_concurrency_one_concurrent_requests_run_one_after_another(server):
    assert server.settings.concurrency == 1
    client = server.client()
    generate(client)  # the first call of a client pays for its set-up; keep it out of the timed part
    started = time.perf_counter()
    jobs = [client.submit(**request_kwargs(num_inference_steps=10, seed=n), api_name="/generate") for n in range(3)]
    results = [job.result(timeout=120) for job in jobs]
    wall = time.perf_counter() - started
    timings = [details["timings"] for _, _, details in results]
    model = [t["model_s"] for t in timings]
    queued = sorted(t["queue_s"] for t in timings)
    # Run one at a time, the model times add up; run together, the wall time would be about the longest one.
    assert wall >= 0.9 * sum(model), (wall, model)
    # The second and third jobs waited for the ones before them.
    assert queued[1] > 0.5 * min(model), (queued, model)
    assert queued[2] > queued[1] + 0.5 * min(model), (queued, model)
