"""Every Gradio internal GLM Image relies on, each as a small named function with a test in
``tests/test_gradio_adapter.py`` that fails loudly when Gradio changes. Nothing here falls back silently.

(Started by branch ops with the functions it needs; branch web adds the page's.)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any


def generation_jobs(demo: Any, api_name: str = "generate") -> tuple[int, int]:
    """(waiting, running): the ``api_name`` jobs in Gradio's queue and those it is running now."""
    queue = demo._queue
    waiting = sum(
        1
        for event_queue in list(queue.event_queue_per_concurrency_id.values())
        for event in list(event_queue.queue)
        if event.fn.api_name == api_name
    )
    running = sum(1 for job in list(queue.active_jobs) if job for event in job if event.fn.api_name == api_name)
    return waiting, running


def undelivered_results(demo: Any) -> int:
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
