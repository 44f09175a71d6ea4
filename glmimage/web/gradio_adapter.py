"""Every Gradio internal GLM Image relies on, each behind one small named function with a test of its own
(``tests/test_gradio_adapter.py``) that fails loudly when Gradio changes. Checked against Gradio 6.31.

Nothing here guesses: an attribute Gradio no longer has raises ``AttributeError`` instead of answering as if all
were well. This version holds the functions of the security layer (``glmimage/web/security.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

# The shape Gradio gives a refused ``Queue.push``: (ok, message, reason); the route turns "queue_full" into 503.
PushResult = tuple[bool, Any, str]


# ---- events (``BlockFunction``) ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventFacts:
    """What the security layer needs to know about one event function of the page."""

    fn_index: int
    api_name: str | None
    public: bool  # listed in the API (``api_visibility="public"``)
    queued: bool  # runs through the queue; False: called directly on ``/gradio_api/run/<name>``
    group: str  # the concurrency id: events sharing it share a concurrency limit
    inputs: int  # values the front end sends for it


def _facts(fn_index: int, fn: Any) -> EventFacts:
    return EventFacts(
        fn_index=fn_index,
        api_name=fn.api_name,
        public=fn.api_visibility == "public",
        queued=bool(fn.queue),
        group=str(fn.concurrency_id),
        inputs=len(fn.inputs),
    )


def event_functions(demo: gr.Blocks) -> list[EventFacts]:
    """Every event function of the page (``Blocks.fns``, keyed by the ``fn_index`` the front end sends)."""
    return [_facts(index, fn) for index, fn in demo.fns.items()]


def event_function(demo: gr.Blocks, fn_index: int) -> EventFacts | None:
    """The event function with this index, or None: Gradio itself would fail with a KeyError and a traceback."""
    fn = demo.fns.get(fn_index)
    return None if fn is None else _facts(fn_index, fn)


def event_function_named(demo: gr.Blocks, api_name: str) -> EventFacts | None:
    """The event function with this API name, as Gradio's ``route_utils.get_fn`` finds it, or None."""
    for index, fn in demo.fns.items():
        if fn.api_name == api_name:
            return _facts(index, fn)
    return None


# ---- sessions (``StateHolder``) --------------------------------------------------------------------------------


def session_exists(demo: gr.Blocks, session_hash: str) -> bool:
    """Whether Gradio holds state for this session (it makes it on the session's first event)."""
    return session_hash in demo.state_holder.session_data


def sessions_oldest_first(demo: gr.Blocks) -> list[str]:
    """Every session Gradio holds, least recently used first (the order its LRU evicts in)."""
    holder = demo.state_holder
    with holder.lock:
        return list(holder.session_data)


def session_count(demo: gr.Blocks) -> int:
    return len(demo.state_holder.session_data)


def drop_session(demo: gr.Blocks, session_hash: str) -> list[Any]:
    """Remove Gradio's whole record of one session (its states and last inputs and outputs); returns the values
    of its ``gr.State`` components, for the caller to dispose of (Gradio's own eviction never calls their
    ``delete_callback``)."""
    holder = demo.state_holder
    with holder.lock:
        state = holder.session_data.pop(session_hash, None)
        holder.time_last_used.pop(session_hash, None)
    return [] if state is None else list(state.state_data.values())


# ---- the queue -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobFacts:
    """One job waiting in the queue or running."""

    event_id: str
    session_hash: str
    group: str
    enqueued_at: float  # time.monotonic() when it joined
    running: bool


def queued_jobs(demo: gr.Blocks) -> list[JobFacts]:
    """Every job waiting or running, read from Gradio's own queue so the list can never drift."""
    queue = demo._queue
    jobs = [
        JobFacts(e._id, e.session_hash, str(e.concurrency_id), e.enqueue_time, False)
        for q in list(queue.event_queue_per_concurrency_id.values())
        for e in list(q.queue)
    ]
    jobs += [
        JobFacts(e._id, e.session_hash, str(e.concurrency_id), e.enqueue_time, True)
        for job in list(queue.active_jobs)
        if job
        for e in job
    ]
    return jobs


def waiting_in_groups(demo: gr.Blocks, groups: Callable[[str], bool]) -> int:
    """Jobs waiting (not running) in the concurrency groups ``groups`` says yes to."""
    return sum(
        len(q.queue) for group, q in list(demo._queue.event_queue_per_concurrency_id.items()) if groups(str(group))
    )


async def drop_job(demo: gr.Blocks, event_id: str) -> None:
    """Take a waiting job out of the queue, or mark a running one as abandoned (``Event.alive = False``, which
    the page's generate handler reads as "stop at the next step"), as Gradio does when a stream disconnects."""
    await demo._queue.clean_events(event_id=event_id)


def job_exists(demo: gr.Blocks, event_id: str) -> bool:
    """Whether a job with this id is queued, running, or finished with its result not yet read."""
    queue = demo._queue
    return event_id in queue.event_ids_to_events or any(
        event_id in ids for ids in list(queue.pending_event_ids_session.values())
    )


def session_of_job(demo: gr.Blocks, event_id: str) -> str | None:
    """The session a job belongs to (for plain ``/call/<name>`` jobs Gradio uses the job's own id), or None."""
    queue = demo._queue
    event = queue.event_ids_to_events.get(event_id)
    if event is not None:
        return event.session_hash
    return next((s for s, ids in list(queue.pending_event_ids_session.items()) if event_id in ids), None)


def has_messages_for(demo: gr.Blocks, session_hash: str) -> bool:
    """Whether Gradio has a message box for this session: ``/queue/data`` for any other session fails inside
    the stream with a traceback."""
    return session_hash in demo._queue.pending_messages_per_session


def guard_queue_push(demo: gr.Blocks, admit: Callable[[EventFacts, Mapping[str, int]], PushResult | None]) -> None:
    """Run ``admit`` before every job joins the queue. It gets the job's event and, per concurrency group, the
    joins it admitted whose push has not finished (Gradio's validator runs inside the push, before the job is
    appended); it returns None to let the job in, or the refusal Gradio's ``Queue.push`` would give. The check
    and the count happen together on the event loop, so simultaneous joins cannot all pass one cap."""
    queue = demo._queue
    original: Callable[..., Awaitable[PushResult]] = queue.push
    joining: dict[str, int] = {}

    async def push(body: Any, request: Any, username: str | None) -> PushResult:
        facts = event_function(demo, body.fn_index) if isinstance(body.fn_index, int) else None
        if facts is None:
            return await original(body, request, username)
        refusal = admit(facts, joining)
        if refusal is not None:
            return refusal
        joining[facts.group] = joining.get(facts.group, 0) + 1
        try:
            return await original(body, request, username)
        finally:
            joining[facts.group] -= 1

    queue.push = push


# ---- components and files --------------------------------------------------------------------------------------


def has_server_function(demo: gr.Blocks, component_id: Any, fn_name: Any) -> bool:
    """Whether ``/gradio_api/component_server`` may call ``fn_name`` on component ``component_id``: Gradio calls
    only methods it marked as server functions, and fails with a traceback on an unknown component."""
    if not isinstance(component_id, int) or not isinstance(fn_name, str):
        return False
    block = demo.blocks.get(component_id)
    if block is None:
        return False
    method = getattr(block, fn_name, None)
    return method is not None and getattr(method, "_is_server_fn", False) is True


def upload_folder() -> Path:
    """Gradio's temporary folder: uploads, Gradio's file cache and GLM Image's own files live under it."""
    return Path(gr.utils.get_upload_folder())
