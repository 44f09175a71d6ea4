"""Every Gradio internal GLM Image relies on, each behind one small named function.

Gradio documents no way to count a visitor's queued jobs, to tell that a visitor left mid-job, or to forget a
session's stored inputs and outputs; these functions read its private attributes for that. Each one has a test
in ``tests/test_gradio_adapter.py`` against the pinned version below, and none of them falls back to a default
when an attribute is missing: after a Gradio upgrade they raise (and the tests fail) instead of silently switching
off the per-visitor job cap, stop-on-disconnect or session clean-up. On an upgrade, re-check each function
against the new Gradio, then move the pin.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Imported where used: the server module (and so `app.py --help`) loads this before anything needs Gradio.
if TYPE_CHECKING:
    import gradio as gr

GRADIO_VERSION = "6.31.0"
"""The Gradio version these functions were checked against (``requirements.txt`` pins the same)."""


# ---- the queue (gradio/queueing.py: Queue, EventQueue, Event) ----------------------------------------------------


def queue_length(demo: gr.Blocks) -> int:
    """Jobs waiting in the queue, all concurrency groups together (``len(Queue)``; not those running)."""
    return len(demo._queue)


def waiting_and_running_events(demo: gr.Blocks) -> Iterator[Any]:
    """Every event waiting in any concurrency group's queue, then every event a worker is running."""
    queue = demo._queue
    for group in queue.event_queue_per_concurrency_id.values():
        yield from group.queue
    for job in queue.active_jobs:  # one slot per worker: None when idle, else the events it runs
        if job is not None:
            yield from job


def running_events(demo: gr.Blocks) -> Iterator[Any]:
    """Every event a worker is running now."""
    for job in demo._queue.active_jobs:
        if job is not None:
            yield from job


def event_api_name(event: Any) -> str | None:
    """The ``api_name`` of the event listener an event runs (None for listeners without one)."""
    return event.fn.api_name


def event_client_host(event: Any) -> str | None:
    """The client address of the request that queued the event: uvicorn's, after its proxy-header handling."""
    client = event.request.client
    return client.host if client is not None else None


def event_session_hash(event: Any) -> str:
    return event.session_hash


def event_alive(event: Any) -> bool:
    """False once the client that waits for this event's result dropped its stream."""
    return event.alive


# ---- per-session state (gradio/state_holder.py: StateHolder, SessionState) ---------------------------------------


def session_closed(demo: gr.Blocks, session_hash: str) -> bool:
    """True once the session's page closed (its heartbeat stream ended); False for an unknown session."""
    state = demo.state_holder.session_data.get(session_hash)
    return state is not None and state.is_closed


def session_values(demo: gr.Blocks, session_hash: str) -> list[Any]:
    """The values of the session's ``gr.State`` components ([] for an unknown session)."""
    state = demo.state_holder.session_data.get(session_hash)
    return [] if state is None else list(state.state_data.values())


def drop_session(demo: gr.Blocks, session_hash: str) -> list[Any]:
    """Remove Gradio's whole record of one session (its states and its copy of the page's inputs and outputs);
    returns the ``gr.State`` values it held so the caller can dispose of them."""
    holder = demo.state_holder
    state = holder.session_data.pop(session_hash, None)
    holder.time_last_used.pop(session_hash, None)
    return [] if state is None else list(state.state_data.values())


def last_activity(demo: gr.Blocks) -> dict[str, datetime.datetime]:
    """When each known session last did something: Gradio notes an event when it starts, and a state's time when
    it is set (a generation sets the session's state when it ends)."""
    holder = demo.state_holder
    activity = {}
    for session_hash, used in list(holder.time_last_used.items()):
        state = holder.session_data.get(session_hash)
        set_at = [] if state is None else [at for _ttl, at in list(state._state_ttl.values())]
        activity[session_hash] = max([used, *set_at])
    return activity


# ---- requests and files ---------------------------------------------------------------------------------------------


def mark_request(request: gr.Request, name: str, value: object) -> None:
    """Attach a value to the HTTP request that queued an event: set in its validator, read by its function (both
    get a ``gr.Request`` over the same underlying request)."""
    setattr(request.request.state, name, value)


def request_mark(request: gr.Request, name: str) -> Any:
    """A value set by :func:`mark_request`, or None when none was set."""
    state = request.request.state
    try:
        return getattr(state, name)
    except AttributeError:  # starlette's State: not set on this request
        return None


def upload_folder() -> Path:
    """Gradio's temporary folder (``GRADIO_TEMP_DIR``): files under it are served without a copy."""
    import gradio as gr

    return Path(gr.utils.get_upload_folder())


# ---- shutdown drain and login (gradio/queueing.py, gradio/routes.py, gradio/templates) ---------------------------


def generation_jobs(demo: gr.Blocks, api_name: str = "generate") -> tuple[int, int]:
    """(waiting, running): the ``api_name`` jobs in Gradio's queue and those it is running now."""
    waiting = sum(
        1
        for group in list(demo._queue.event_queue_per_concurrency_id.values())
        for event in list(group.queue)
        if event_api_name(event) == api_name
    )
    running = sum(1 for event in running_events(demo) if event_api_name(event) == api_name)
    return waiting, running


def undelivered_results(demo: gr.Blocks) -> int:
    """Events whose last message ("process completed") has not yet been sent down a client's stream.

    A finished job leaves Gradio's queue before its result reaches the client; a server that closes at that
    moment sends "Server stopped unexpectedly" instead of the images."""
    return sum(len(ids) for ids in list(demo._queue.pending_event_ids_session.values()))


def logged_in_user(server_app: Any, cookies: Mapping[str, str]) -> str | None:
    """The user whose login cookie this is (Gradio's ``/login`` sets it), or None: the check Gradio's own
    ``login_check`` makes, for the routes Gradio leaves open (heartbeat, cancel, ...)."""
    cookie_id = server_app.cookie_id
    token = cookies.get(f"access-token-{cookie_id}") or cookies.get(f"access-token-unsecure-{cookie_id}")
    return server_app.tokens.get(token) if token else None


# Gradio's page template writes the API description (endpoints, parameters, defaults) into the page, even into
# the login page it serves before anyone has logged in.
_API_INFO_SCRIPT = re.compile(rb"window\.gradio_api_info = .*?;</script>", re.DOTALL)
_NO_API_INFO = b'window.gradio_api_info = {"named_endpoints":{},"unnamed_endpoints":{}};</script>'


def without_api_info(page: bytes) -> bytes:
    """Gradio's HTML page with an empty API description. Raises ValueError when the page has none to remove
    (a Gradio whose template changed), rather than serve what it meant to hide."""
    stripped, count = _API_INFO_SCRIPT.subn(_NO_API_INFO, page, count=1)
    if count != 1:
        raise ValueError("Gradio's page has no window.gradio_api_info script: check gradio_adapter.without_api_info")
    return stripped
