"""Plain-HTTP calls to ``/generate``, made the way a script (or an attacker) makes them.

``POST /gradio_api/call/generate`` queues the job (or is refused before queuing), then
``GET /gradio_api/call/generate/<event_id>`` streams its events. Unlike gradio_client this can send NaN tokens,
pick its source address on the loopback network (127.0.0.x: one "visitor" each), and forge headers.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from glmimage.service import API_FIELDS

CALL_PATH = "/gradio_api/call/generate"


def http_client(url: str, source: str = "127.0.0.1", timeout: float = 60.0) -> httpx.Client:
    """A client whose connections come from ``source``, so the server sees it as that visitor's address."""
    return httpx.Client(base_url=url.rstrip("/"), timeout=timeout, transport=httpx.HTTPTransport(local_address=source))


def as_data(values: dict[str, Any]) -> list[Any]:
    """The positional ``data`` list of /generate, in API order."""
    return [values[name] for name in API_FIELDS]


@dataclass
class Outcome:
    """How one call ended. ``kind``: "image", "refused" (the validator said no: 422), "queue_full" (503),
    "error" (an error event from the running job), "http" (any other status)."""

    kind: str
    status: int
    messages: dict[str, str] = field(default_factory=dict)  # refused: field -> message shown on that field
    error: str | None = None  # error: the text shown to the visitor
    data: Any = None  # image: the outputs (gallery, seed, details)
    body: str = ""  # everything the server sent, for checks on what a response may contain
    seconds: float = 0.0


def submit(
    client: httpx.Client,
    values: dict[str, Any] | None = None,
    *,
    body: str | None = None,
    session_hash: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """POST the job. ``body`` replaces the JSON built from ``values`` (for NaN tokens or broken JSON)."""
    if body is None:
        payload: dict[str, Any] = {"data": as_data(values or {})}
        if session_hash is not None:
            payload["session_hash"] = session_hash
        body = json.dumps(payload)  # allow_nan: NaN and Infinity go out as bare tokens
    return client.post(CALL_PATH, content=body, headers={"content-type": "application/json", **(headers or {})})


def refusal(response: httpx.Response) -> dict[str, str]:
    """Field -> message for each field the validator marked invalid."""
    detail = response.json().get("detail")
    if not isinstance(detail, list):
        return {}
    return {
        d["parameter_name"]: d["message"]
        for d in detail
        if isinstance(d, dict) and d.get("__type__") == "validate" and not d.get("is_valid")
    }


def read_events(client: httpx.Client, event_id: str) -> list[tuple[str, Any]]:
    """The job's server-sent events, in order, until the server closes the stream."""
    events: list[tuple[str, Any]] = []
    name = None
    with client.stream("GET", f"{CALL_PATH}/{event_id}") as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and name is not None:
                events.append((name, json.loads(line.split(":", 1)[1])))
                name = None
    return events


def outcome_of(client: httpx.Client, response: httpx.Response, started: float) -> Outcome:
    """Follow a submitted job to its end."""
    if response.status_code == 503:
        return Outcome("queue_full", 503, body=response.text, seconds=time.perf_counter() - started)
    if response.status_code == 422 and refusal(response):
        return Outcome(
            "refused", 422, messages=refusal(response), body=response.text, seconds=time.perf_counter() - started
        )
    if response.status_code != 200:
        return Outcome("http", response.status_code, body=response.text, seconds=time.perf_counter() - started)
    events = read_events(client, response.json()["event_id"])
    text = json.dumps(events)
    final = [(name, data) for name, data in events if name in ("complete", "error")]
    if not final:
        return Outcome(
            "http", 200, body=text, error="stream ended without a result", seconds=time.perf_counter() - started
        )
    name, data = final[-1]
    if name == "complete":
        return Outcome("image", 200, data=data, body=text, seconds=time.perf_counter() - started)
    message = data.get("error") if isinstance(data, dict) else data
    return Outcome("error", 200, error=message, body=text, seconds=time.perf_counter() - started)


def call(client: httpx.Client, values: dict[str, Any] | None = None, **kwargs: Any) -> Outcome:
    """Submit a job and follow it to its end."""
    started = time.perf_counter()
    return outcome_of(client, submit(client, values, **kwargs), started)


def healthz(client: httpx.Client) -> tuple[float, dict[str, Any]]:
    """Seconds to the first byte of /healthz, and its JSON."""
    started = time.perf_counter()
    with client.stream("GET", "/healthz") as response:
        chunks = response.iter_raw()
        first = next(chunks)
        ttfb = time.perf_counter() - started
        body = first + b"".join(chunks)
    assert response.status_code == 200, body
    return ttfb, json.loads(body)


def session_of(demo: Any, session_hash: str) -> Any:
    """The glmimage Session a visitor's ``gr.State`` holds on the (in-process) server."""
    from glmimage.sessions import Session
    from glmimage.web.gradio_adapter import session_values

    return next(value for value in session_values(demo, session_hash) if isinstance(value, Session))
