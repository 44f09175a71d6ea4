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
import json
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
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
    """Remove Gradio's whole record of one session (its states and last inputs and outputs); returns the values
    of its ``gr.State`` components, for the caller to dispose of (Gradio's own eviction never calls their
    ``delete_callback``)."""
    holder = demo.state_holder
    with holder.lock:
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


# The page's events whose jobs take a pipeline (Generate, Variations, Edit): what a shutdown waits for, and what
# --max-jobs-per-client counts.
GPU_EVENTS = ("generate", "variations", "edit")


def generation_jobs(demo: gr.Blocks, api_names: tuple[str, ...] = GPU_EVENTS) -> tuple[int, int]:
    """(waiting, running): the jobs of the ``api_names`` events in Gradio's queue and those it is running now."""
    waiting = sum(
        1
        for group in list(demo._queue.event_queue_per_concurrency_id.values())
        for event in list(group.queue)
        if event_api_name(event) in api_names
    )
    running = sum(1 for event in running_events(demo) if event_api_name(event) in api_names)
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


# ---- uploads (gradio/routes.py: POST /gradio_api/upload; gradio/blocks.py: upload_file_set, Block.temp_files) ----


def is_gradio_upload(demo: gr.Blocks, path: str) -> bool:
    """True when ``path`` is a file sent to POST /gradio_api/upload: the route notes each one it writes in
    ``Blocks.upload_file_set``. Any other path a client names for a file input passes Gradio's own check as long
    as it lies inside the temporary folder (another visitor's images do), and Gradio then adds it to the
    component's ``temp_files`` too, so neither of those proves the file is the client's."""
    return path in demo.upload_file_set


def forget_gradio_upload(demo: gr.Blocks, component: gr.components.Component, path: str) -> None:
    """Drop Gradio's notes of an uploaded file that was deleted (its path names a hash of its content): the
    upload route's and the input component's."""
    demo.upload_file_set.discard(path)
    component.temp_files.discard(path)


def gradio_uploads(demo: gr.Blocks) -> list[str]:
    """Every file the upload route wrote that Gradio still notes (``Blocks.upload_file_set``)."""
    return list(demo.upload_file_set)


def delete_gradio_upload(demo: gr.Blocks, path: str) -> None:
    """Delete an uploaded file, the folder the upload route made for it (``<temp folder>/<hash of its content>/``)
    once empty, and every note Gradio keeps of it: the upload route's and each component's ``temp_files``, all
    listed in ``Blocks.temp_file_sets``."""
    file = Path(path)
    file.unlink(missing_ok=True)
    if file.parent.resolve().parent == upload_folder().resolve():
        try:
            file.parent.rmdir()
        except OSError:  # not empty: another upload with the same content is still there
            pass
    for notes in demo.temp_file_sets:
        notes.discard(path)


def files_named_by_jobs(demo: gr.Blocks) -> set[str]:
    """Every file path in the input values of the jobs waiting or running (``Event.data`` is the request's body; its
    ``data`` holds the inputs as the client sent them), so that a file a queued job will read is kept until it
    runs."""
    paths: set[str] = set()

    def collect(value: Any) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("path"), str):
                paths.add(value["path"])
            for inner in value.values():
                collect(inner)
        elif isinstance(value, (list, tuple)):
            for inner in value:
                collect(inner)

    for event in list(waiting_and_running_events(demo)):
        body = event.data
        collect(body.data if body is not None else None)
    return paths


def upload_refusal(reason: str) -> Exception:
    """The exception that, raised while Gradio's upload route reads a request's body, makes it delete every file
    it has written for that request and answer with ``reason`` (``GradioMultiPartParser.parse`` catches
    ``MultiPartException``, unlinks its temporary files and re-raises; the route answers 400, or 413 when the text
    says "maximum allowed size")."""
    from gradio.route_utils import MultiPartException

    return MultiPartException(reason)


def event_payload(event: gr.EventData) -> Any:
    """What the front end sent with an event, as it came (``EventData._data``): for a Gallery's ``delete``,
    ``{"file": {...}, "index": i}``, which ``gr.DeletedFileData`` cannot read."""
    return event._data


def forget_input_value(demo: gr.Blocks, session_hash: str | None, component: gr.components.Component) -> None:
    """Gradio keeps the last value of each input of a session (for a file: its path and its original name) until
    the session is dropped; set ``component``'s to None."""
    state = demo.state_holder.session_data.get(session_hash) if session_hash else None
    if state is not None:
        state._update_value_in_config(component._id, None)


# ---- the page's own script (Gradio's front end: its DOM, not a documented API) ---------------------------------

# Gradio's progress display over an output while an event that shows progress there waits or runs: the element
# loses its "hide" class and shows a ".progress-text" such as "queue: 1/2 | 0.4s" or "3/50 steps | 2.1s".
STATUS_TRACKER = "[data-testid='status-tracker']"
PROGRESS_TEXT = ".progress-text"
HIDDEN_CLASS = "hide"

_PAGE_SCRIPT = """
(() => {
 const start = () => {
  const TITLE = __TITLE__, WORDS = __WORDS__;
  const words = WORDS[(navigator.language || "en").toLowerCase().startsWith("zh") ? "zh" : "en"];
  const fill = (text, values) => text.replace(/\\{(\\w+)\\}/g, (_, name) => values[name]);

  // The progress text over the result while a job of this tab waits or runs; null when none does.
  function jobText() {
    const tracker = document.querySelector("#result __TRACKER__");
    if (!tracker || tracker.classList.contains("__HIDDEN__")) return null;
    const text = tracker.querySelector("__PROGRESS__");
    return text ? text.textContent : null;
  }

  // Stop (beside Generate, and beside Edit) is enabled only while a job of this tab waits or runs; the tab title
  // shows how far it is.
  let pending = null;
  function update() {
    pending = null;
    const text = jobText();
    for (const stop of document.querySelectorAll("#stop, #edit-stop")) {
      if (stop.disabled !== (text === null)) stop.disabled = text === null;
    }
    let title = TITLE;
    if (text !== null) {
      const head = text.split("|")[0];
      const counts = head.match(/(\\d+)\\s*\\/\\s*(\\d+)/);
      if (counts && head.includes("queue")) title = fill(words.queue, {position: counts[1] + "/" + counts[2]});
      else if (counts) title = fill(words.step, {done: counts[1], total: counts[2]});
      else title = "…";
      title += " · " + TITLE;
    }
    if (document.title !== title) document.title = title;
  }
  new MutationObserver(() => { pending ??= setTimeout(update, 50); }).observe(document.body, {
    subtree: true, childList: true, characterData: true, attributes: true, attributeFilter: ["class"],
  });
  update();

  // Ctrl+Enter (Cmd+Enter) in the prompt generates, in the edit box's description edits; Enter stays a new line
  // and Shift+Enter Gradio's submit.
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey) || event.isComposing) return;
    if (!(event.target instanceof Element)) return;
    const inPrompt = event.target.closest("#prompt"), inEdit = event.target.closest("#edit-prompt");
    const button = inPrompt ? "#generate" : inEdit ? "#edit-run" : null;
    if (!button) return;
    event.preventDefault();
    document.querySelector(button)?.click();
  }, true);

  // Pictures pasted on the page (not text into a text box): into the Edit box while it is shown, as if dropped
  // there; otherwise one file goes to "Read parameters", whose section opens first when it is closed (its box is
  // only drawn while it is open).
  document.addEventListener("paste", (event) => {
    const data = event.clipboardData;
    if (!data || data.files.length < 1) return;
    const inTextBox = event.target instanceof Element && event.target.closest("textarea, input");
    if (inTextBox && data.types.includes("text/plain")) return;
    const editBox = document.querySelector("#edit-pictures");
    const editInput = editBox && editBox.offsetParent !== null && editBox.querySelector("input[type='file']");
    if (editInput) {
      event.preventDefault();
      const transfer = new DataTransfer();
      for (const file of data.files) transfer.items.add(file);
      editInput.files = transfer.files;
      editInput.dispatchEvent(new Event("change", {bubbles: true}));
      return;
    }
    if (data.files.length !== 1) return;
    const section = document.querySelector("#read-parameters");
    if (!section) return;
    event.preventDefault();
    const file = data.files[0];
    const box = () => section.querySelector("#read-file input[type='file']");
    if (!box()) section.querySelector(".label-wrap")?.click();
    section.scrollIntoView({block: "center"});
    const give = (tries) => {
      const input = box();
      if (!input) { if (tries > 0) setTimeout(() => give(tries - 1), 50); return; }
      const transfer = new DataTransfer();
      transfer.items.add(file);
      input.files = transfer.files;
      input.dispatchEvent(new Event("change", {bubbles: true}));
    };
    give(40);
  });

  // "Download all": the server puts the zip into the offscreen download button and changes the ticket; the
  // button, pressed here, saves what it holds.
  let ticket = "";
  new MutationObserver(() => {
    const box = document.querySelector("#download-all-ready textarea, #download-all-ready input");
    if (!box || !box.value || box.value === ticket) return;
    ticket = box.value;
    setTimeout(() => document.querySelector("#download-all-file")?.click(), 100);
  }).observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true});
 };
 // Gradio adds the page's head scripts itself, after the document has loaded.
 if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
 else start();
})();
"""


def page_script(title: str, words: dict[str, dict[str, str]]) -> str:
    """The page's script, served as a file of our own (``routes.page_script_route``) and named in
    ``launch(head=...)``: Gradio's ``js=`` would need the CSP to allow eval, and Gradio adds head scripts from the
    page's JavaScript, where no nonce reaches them; a same-origin file needs neither. It enables Stop only while a
    job of this tab waits or runs, shows the job's progress in the tab title, takes Ctrl/Cmd+Enter in the prompt
    (and in the edit description), pasted pictures into the Edit box while it is shown (else a file to read its
    parameters), and saves the "Download all" zip. ``words``: per language ("en", "zh"), the tab title's "step"
    and "queue" templates."""
    replacements = {
        "__TITLE__": json.dumps(title),
        "__WORDS__": json.dumps(words, ensure_ascii=False),
        "__TRACKER__": STATUS_TRACKER,
        "__HIDDEN__": HIDDEN_CLASS,
        "__PROGRESS__": PROGRESS_TEXT,
    }
    script = _PAGE_SCRIPT
    for marker, value in replacements.items():
        script = script.replace(marker, value)
    return script


# ---- the security layer (glmimage/web/security.py) -------------------------------------------------------------

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
