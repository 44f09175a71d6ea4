"""Hostile input over plain HTTP: every /generate parameter gets wrong types, huge, negative and non-finite
numbers, empty and 100 kB strings, control characters, right-to-left marks, emoji, SQL/HTML/JS, null bytes and
lists where scalars belong. Each call ends in a clear refusal on the field at fault (before queuing) or in a
correct image; no response shows a traceback or an internal path; the server serves the next normal request.

The oracle is the core's own validator: whatever ``validate_request`` refuses, the server must refuse with the
same message on the same field; whatever it accepts, the server must draw.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from conftest import request_kwargs
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image
from rawhttp import as_data, call, http_client, session_of, submit

import glmimage
from glmimage import limits
from glmimage.errors import InputError
from glmimage.i18n import load_translations
from glmimage.requests import validate_request
from glmimage.service import API_FIELDS
from glmimage.styles import load_styles
from glmimage.web.handlers import message

STYLES = load_styles()
TRANSLATOR = load_translations()
REPO = str(Path(glmimage.__file__).resolve().parent.parent)
# One step: every accepted call draws a real image, so keep each one cheap.
BASE = request_kwargs(num_inference_steps=1)
HUGE_TEXT = "x" * 100_000
SNIPPETS = [
    "'; DROP TABLE users; --",
    '" OR 1=1 --',
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "javascript:alert(document.cookie)",
    "{{7*7}} ${7*7} {prompt} {0} %s %n",
    "../../../../etc/passwd",
    "\u202eevil\u202c",
    "\u200f\u200e",
    "שלום עולם",
    "مرحبا",
    "🍎🎨👩‍👩‍👧🏳️‍🌈",
    "\u200b\ufeff",
    "e\u0301\u0301\u0301",
    "a\x00b",
    "\x1b[31mred\x1b[0m",
    "\x7f",
    "\ud800",
    "\r\n\t",
]


def assert_no_internals(text: str) -> None:
    """What a response may never show: a traceback, a source file, the server's folders."""
    for marker in ("Traceback", 'File "', '.py"', ".py:", REPO, "site-packages"):
        assert marker not in text, f"response shows {marker!r}: {text[:300]}"


def expected_refusal(values: dict[str, Any]) -> tuple[str, str] | None:
    """(field, message) the server must show for these values, or None when they are valid."""
    try:
        validate_request(STYLES, **values)
    except InputError as exc:
        # The page shows a refusal on the field at fault; size and style rules name no single field.
        field = exc.params.get("field") or (
            "width" if "width" in exc.params else "style" if exc.key == "error.unknown_style" else "prompt"
        )
        return str(field), message(TRANSLATOR, exc, "en")
    return None


def check_call(server, values: dict[str, Any], client=None) -> str:
    """Make the call and check it against the oracle; returns "refused" or "image"."""
    client = client or http_client(server.url)
    outcome = call(client, values)
    expected = expected_refusal(values)
    if expected is not None:
        assert outcome.kind == "refused", (values, outcome.kind, outcome.body[:300])
        field, message = expected
        assert outcome.messages == {field: message}
        assert message.strip()
        assert_no_internals(outcome.body)
        return "refused"
    assert outcome.kind == "image", (values, outcome.kind, outcome.error, outcome.body[:300])
    gallery, seed, details = outcome.data[:3]
    request = validate_request(STYLES, **values)
    assert len(gallery) == request.num_images
    assert Image.open(gallery[0]["image"]["path"]).size == (request.width, request.height)
    assert details["parameters"] == request.to_dict()
    assert details["final_prompt"].strip() and request.prompt.strip() in details["final_prompt"]
    if not request.randomize_seed:
        assert seed == request.seed
    return "image"


# Every parameter with values a script might send; the last column says what must happen.
CASES = [
    ("prompt", "", "refused"),
    ("prompt", "   \n\t ", "refused"),
    ("prompt", HUGE_TEXT, "refused"),
    ("prompt", "a\x00b", "refused"),
    ("prompt", "\x1b[31mred", "refused"),
    ("prompt", "bad \ud800 half", "refused"),
    ("prompt", 12, "refused"),
    ("prompt", None, "refused"),
    ("prompt", True, "refused"),
    ("prompt", ["a cat"], "refused"),
    ("prompt", {"text": "a cat"}, "refused"),
    ("prompt", "\u202eevil\u202c \u200f שלום مرحبا", "image"),
    ("prompt", "🍎🎨👩‍👩‍👧🏳️‍🌈 emoji", "image"),
    ("prompt", "'; DROP TABLE users; -- <script>alert(1)</script>", "image"),
    ("prompt", "{{7*7}} ${7*7} {prompt} {0} %s %n", "image"),
    ("negative_prompt", HUGE_TEXT, "refused"),
    ("negative_prompt", "no\x00pe", "refused"),
    ("negative_prompt", ["blurry"], "refused"),
    ("negative_prompt", 3.5, "refused"),
    ("negative_prompt", "<img src=x onerror=alert(1)>", "image"),
    ("style", "no-such-style", "refused"),
    ("style", "", "refused"),
    ("style", "../../etc/passwd", "refused"),
    ("style", "none\x00", "refused"),
    ("style", ["none"], "refused"),
    ("style", 1, "refused"),
    ("style", None, "refused"),
    ("style", HUGE_TEXT, "refused"),
    ("width", -512, "refused"),
    ("width", 0, "refused"),
    ("width", 513, "refused"),
    ("width", 10**12, "refused"),
    ("width", 2**63, "refused"),
    ("width", 1e308, "refused"),
    ("width", 512.5, "refused"),
    ("width", "512", "refused"),
    ("width", [512], "refused"),
    ("width", None, "refused"),
    ("width", True, "refused"),
    ("height", -1, "refused"),
    ("height", 4096, "refused"),
    ("height", "1e9", "refused"),
    ("height", {}, "refused"),
    ("num_images", 0, "refused"),
    ("num_images", -1, "refused"),
    ("num_images", 5, "refused"),
    ("num_images", 10**9, "refused"),
    ("num_images", 1.5, "refused"),
    ("num_images", [1], "refused"),
    ("seed", -1, "refused"),
    ("seed", 2**32, "refused"),
    ("seed", 10**30, "refused"),
    ("seed", "7", "refused"),
    ("seed", 2**32 - 1, "image"),
    ("randomize_seed", "true", "refused"),
    ("randomize_seed", 1, "refused"),
    ("randomize_seed", None, "refused"),
    ("randomize_seed", [True], "refused"),
    ("num_inference_steps", 0, "refused"),
    ("num_inference_steps", -5, "refused"),
    ("num_inference_steps", 101, "refused"),
    ("num_inference_steps", 10**9, "refused"),
    ("num_inference_steps", 2.5, "refused"),
    ("num_inference_steps", "2", "refused"),
    ("guidance_scale", -0.1, "refused"),
    ("guidance_scale", 20.01, "refused"),
    ("guidance_scale", 1e308, "refused"),
    ("guidance_scale", -1e308, "refused"),
    ("guidance_scale", "3.5", "refused"),
    ("guidance_scale", [3.5], "refused"),
    ("guidance_scale", None, "refused"),
    ("guidance_scale", True, "refused"),
]


@pytest.mark.parametrize("field, value, result", CASES, ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(CASES)])
def test_each_hostile_value_gets_a_clear_refusal_or_a_correct_image(server, field, value, result):
    assert check_call(server, {**BASE, field: value}) == result


@pytest.mark.parametrize("field", ["width", "height", "num_images", "seed", "num_inference_steps", "guidance_scale"])
@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_tokens_are_refused_on_their_field(server, field, token):
    # gradio_client refuses to send these; a script sends them as bare JSON tokens.
    values = {**BASE, field: "__TOKEN__"}
    body = json.dumps({"data": as_data(values)}).replace('"__TOKEN__"', token)
    response = submit(http_client(server.url), body=body)
    assert response.status_code == 422, response.text
    refused = {d["parameter_name"]: d["message"] for d in response.json()["detail"] if not d["is_valid"]}
    assert list(refused) == [field]
    number = float(token.lower().replace("infinity", "inf"))
    assert expected_refusal({**BASE, field: number}) == (field, refused[field])


@pytest.mark.parametrize(
    "body",
    [
        "{not json",
        "",
        "null",
        "[]",
        '{"data": "a cat"}',
        '{"data": {"prompt": "a cat"}}',
        '{"data": [1, 2, 3]}',
        '{"data": []}',
        json.dumps({"data": [HUGE_TEXT] * 3}),
        '{"data": [' + "[" * 500 + "]" * 500 + "]}",
    ],
)
def test_a_malformed_body_is_refused_without_internals(server, body):
    response = submit(http_client(server.url), body=body)
    assert 400 <= response.status_code < 500, response.text[:300]
    assert_no_internals(response.text)


def test_prompt_length_and_image_count_are_refused_at_their_named_limits(server):
    client = http_client(server.url)
    too_long = call(client, {**BASE, "prompt": "x" * (limits.MAX_PROMPT_CHARS + 1)})
    assert too_long.messages == {
        "prompt": f"Prompt is too long: {limits.MAX_PROMPT_CHARS + 1} characters, at most {limits.MAX_PROMPT_CHARS}."
    }
    too_many = call(client, {**BASE, "num_images": limits.MAX_IMAGES + 1})
    assert f"from 1 to {limits.MAX_IMAGES}" in too_many.messages["num_images"]


def test_extra_values_cannot_replace_the_session_state(server):
    # Eleven values: the eleventh lands in the session State's slot, which the server must fill itself.
    outcome = call(http_client(server.url), body=json.dumps({"data": [*as_data(BASE), "not a session", 1]}))
    assert outcome.kind == "image", outcome.body[:300]


def test_refused_requests_with_a_lone_surrogate_or_nan_leave_the_session_log_writable(server):
    # The session log records refused requests; a lone surrogate or a NaN in it would break every later write
    # of the log file (UTF-8) and make it invalid JSON.
    client = http_client(server.url)
    body = json.dumps(
        {
            "data": as_data({**BASE, "prompt": "bad \ud800 half", "guidance_scale": "__NAN__"}),
            "session_hash": "hostile-log-session",
        }
    ).replace('"__NAN__"', "NaN")
    assert submit(client, body=body).status_code == 422
    session = session_of(server.app.demo, "hostile-log-session")
    assert [entry["event"] for entry in session.log] == ["refused"]
    text = session.log_json()
    text.encode("utf-8")
    json.loads(text, parse_constant=lambda token: pytest.fail(f"{token} in the session log"))


HOSTILE_TEXT = st.lists(
    st.sampled_from(SNIPPETS) | st.text(st.characters(exclude_categories=()), max_size=12), max_size=4
).map("".join)
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | HOSTILE_TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=2),
    max_leaves=5,
)
NUMBERS = st.integers() | st.integers(-2, 2100) | st.floats(allow_nan=False) | st.sampled_from([2**32, 2**63, -0.0])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_generated_hostile_values_match_the_validator(server, data):
    field = data.draw(st.sampled_from(API_FIELDS), label="field")
    kind = "text" if field in ("prompt", "negative_prompt", "style") else "number"
    value = data.draw(HOSTILE_TEXT | ANY_JSON if kind == "text" else NUMBERS | ANY_JSON, label="value")
    values = {**BASE, field: value}
    if expected_refusal(values) is None:
        request = validate_request(STYLES, **values)
        # A valid but costly request (2048 px, 100 steps) would only test patience.
        assume((request.width, request.height, request.num_images) == (512, 512, 1))
        assume(request.num_inference_steps <= 2)
    check_call(server, values)


def test_server_answers_a_normal_request_correctly_after_the_hostile_ones(server):
    images, seed, details = server.client().predict(**request_kwargs(width=576, height=512), api_name="/generate")
    assert Image.open(images[0]["image"]).size == (576, 512)
    assert seed == 1234
    assert details["parameters"]["prompt"] == BASE["prompt"]
    assert not math.isnan(details["timings"]["total_s"])
