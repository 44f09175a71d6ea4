"""The server's edge against a hostile visitor: what one can make the server hold, write, run or log.

Gradio serves routes around the page's own events (uploads, session streams, files, component calls) that a
public Space cannot leave open. One ASGI middleware (:class:`EdgeMiddleware`) sees every request before Gradio
does, and :class:`Edge` keeps what it needs to know across requests:

- **bounded requests**: a body is read up to ``limits.MAX_REQUEST_BODY_BYTES`` and refused past it, whether its
  size was declared (Content-Length) or not (chunked), before Gradio reads a byte; session ids longer or other
  than Gradio's own format are refused;
- **uploads only where a feature needs them**: the upload route answers 403 while :attr:`EdgePolicy.upload_limit`
  says 0, and the recording route always (no feature records); an upload request carries at most
  :attr:`EdgePolicy.max_upload_files` files of at most :attr:`EdgePolicy.max_file_bytes` each (counted as the body
  streams in, so a file past either limit is never written, and Gradio deletes what it wrote for that request),
  and each address may upload at :attr:`EdgePolicy.upload_rate`; files are never fetched from other sites
  through ``/gradio_api/file=<url>``; stray upload temporaries are swept at start, on schedule and at shutdown,
  and an upload no request has used within :data:`UNUSED_UPLOAD_S` is deleted (each upload is deleted by the
  request that uses it; see ``handlers.edit``);
- **sessions cost an attacker, not a visitor**: new sessions per address are rate limited, and at
  ``--max-sessions`` the least recently used session *not in use* makes room (its files deleted at once);
  a session in use (page open, job queued or running, result being read) is never evicted;
- **the queue is for generations**: ``--max-queue`` counts only generation jobs; other page events wait in a
  group of their own (:data:`UI_QUEUE_MAX`);
- **GPU time goes to listeners**: a job whose result stream has not connected within ``--listener-timeout``
  seconds is taken out of the queue, or stopped at its next step if it already runs;
- **quiet logs**: unknown endpoints, events and jobs are refused with a 4xx and one short log line before
  Gradio can fail on them with a traceback;
- **security headers** on every response, with a Content-Security-Policy whose scripts carry a per-response
  nonce.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import stat
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from python_multipart.multipart import MultipartParser, parse_options_header

from .. import limits
from ..config import Settings
from ..i18n import Translator, language_of, load_translations
from ..models.families import COGVIEW4, Family
from ..ratelimit import RateLimit, VisitorLimiter, canonical_address
from . import gradio_adapter as adapter

log = logging.getLogger("glmimage.security")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The concurrency group every generation event joins (``concurrency_id="gpu"`` in web/ui.py).
GENERATION_GROUP = "gpu"
# Other page events waiting at once. They run as soon as a worker is free, so only a flood makes them wait.
UI_QUEUE_MAX = 256
# Gradio's session ids: its front end makes Math.random().toString(36).substring(2) (about 11 characters),
# gradio_client str(uuid4()) (36), and a plain /call job uses its event id (32 hex digits).
SESSION_HASH = re.compile(r"[A-Za-z0-9_-]{1,36}")
EVENT_ID = re.compile(r"[0-9a-f]{32}")
# A stray upload temporary (Gradio's NamedTemporaryFile) untouched this long is an upload that will never end.
STRAY_MIN_AGE_S = 60.0
SWEEP_INTERVAL_S = 60.0
WATCH_INTERVAL_S = 0.5
# A session id admitted as new is not counted again for this long: a page's first events arrive together,
# before Gradio has made the session. At most this many such ids (and dropped jobs) are remembered.
RECENT_NEW_S = 10.0
RECENT_NEW_SESSIONS = 4096
# An HTML page larger than this is not rewritten (Gradio's is ~100 KB); it is served with its scripts blocked.
MAX_HTML_BYTES = 8 * 2**20

API = "/gradio_api"
# Room for the multipart framing around uploaded files (boundaries, part headers, the files' names).
UPLOAD_FRAMING_BYTES = 64 * 1024
# Gradio's route for microphone and webcam recordings (RECORDING): no feature of the page records, so it is
# always refused.
UPLOAD = f"{API}/upload"
RECORDING = f"{API}/process_recording"
UPLOAD_ROUTES = (UPLOAD, RECORDING, f"{API}/upload_progress")
# An upload that no request has used this long is deleted: the page takes a picture in as soon as it arrives, an
# API client names its upload in the call it makes next, and a queued job's uploads are kept until it runs.
UNUSED_UPLOAD_S = 120.0
UPLOAD_SWEEP_S = 10.0
# Routes whose JSON body names an event and a session; each may be a session's first request.
_RUN = re.compile(rf"{API}/(?:run|api)/([^/]+)/?")
_CALL = re.compile(rf"{API}/call/([^/]+)/?")
_CALL_V2 = re.compile(rf"{API}/call/v2/([^/]+)/?")
_CALL_STREAM = re.compile(rf"{API}/call/(?:v2/)?[^/]+/([^/]+)/?")
_HEARTBEAT = re.compile(rf"{API}/heartbeat/([^/]*)/?")


def no_uploads() -> int:
    """The upload limit while no feature takes pictures: none."""
    return 0


@dataclass
class EdgePolicy:
    """What the edge lets through; built from the settings by :meth:`from_settings`."""

    max_queue: int
    max_sessions: int
    session_rate: RateLimit
    listener_timeout: float
    frame_ancestors: str
    max_body_bytes: int = limits.MAX_REQUEST_BODY_BYTES
    # Bytes one upload request may carry; 0 refuses the upload route. A feature that takes pictures (editing)
    # sets a function that says how much, for the model loaded now.
    upload_limit: Callable[[], int] = no_uploads
    # Files one upload request may carry, and bytes each (0: no per-file bound beyond ``upload_limit``).
    max_upload_files: int = 1
    max_file_bytes: int = 0
    # Uploads per address; a request counts once per ``max_file_bytes`` it declares (disabled: "0").
    upload_rate: RateLimit = field(default_factory=lambda: RateLimit(0, 0.0))

    @classmethod
    def from_settings(cls, settings: Settings, family: Family = COGVIEW4) -> EdgePolicy:
        """The page takes pictures ("Read parameters from a picture": one; an edit, with a model that takes
        reference pictures: up to its number): one upload request may carry that many files of at most
        ``--max-upload-mb`` each, and each address may upload at ``--upload-rate-limit``."""
        files = max(1, family.max_reference_images)
        upload_bytes = files * settings.max_upload_bytes + UPLOAD_FRAMING_BYTES
        return cls(
            max_queue=settings.max_queue,
            max_sessions=settings.max_sessions,
            session_rate=settings.parsed_session_rate_limit,
            listener_timeout=settings.listener_timeout,
            frame_ancestors=settings.frame_ancestors,
            upload_limit=lambda: upload_bytes,
            max_upload_files=files,
            max_file_bytes=settings.max_upload_bytes,
            upload_rate=settings.parsed_upload_rate_limit,
        )


def content_security_policy(frame_ancestors: str, nonce: str | None) -> str:
    """The smallest policy Gradio's page works under (checked in Chromium: no violation while the page loads,
    generates, edits, restores history and shows the API page): everything from the app itself; inline scripts
    only with this response's nonce, and no eval (so the page uses no Gradio ``js=``, which Gradio compiles from
    strings: its own script is a same-origin file, ``/glmimage/page.js``); inline styles (Svelte sets style
    attributes, the theme is a ``<style>``) and ``data:`` images (Gradio's icons); no plugins, no foreign
    ``<base>`` or form targets."""
    scripts = f"'self' 'nonce-{nonce}'" if nonce else "'self'"
    return "; ".join(
        [
            "default-src 'self'",
            f"script-src {scripts}",
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data:",
            "object-src 'none'",
            "base-uri 'self'",
            "form-action 'self'",
            f"frame-ancestors {frame_ancestors}",
        ]
    )


def security_headers(frame_ancestors: str, nonce: str | None) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"content-security-policy", content_security_policy(frame_ancestors, nonce).encode()),
    ]
    # For browsers without CSP frame-ancestors, where X-Frame-Options can say the same.
    legacy = {"'self'": b"SAMEORIGIN", "'none'": b"DENY"}.get(frame_ancestors)
    if legacy:
        headers.append((b"x-frame-options", legacy))
    return headers


def add_nonce(html: bytes, nonce: str) -> bytes:
    """Every ``<script`` tag of a page gets the nonce. Gradio writes its config into the page as JSON with ``<``
    escaped, so the text only occurs as a tag."""
    return html.replace(b"<script", f'<script nonce="{nonce}"'.encode())


@dataclass
class Refusal:
    status: int
    key: str  # message key in assets/i18n (also the log's reason)
    params: dict[str, Any] = field(default_factory=dict)
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def route_label(path: str) -> str:
    """The route a path belongs to, for the log: never the session id, file name or event id it carries."""
    for prefix in (f"{API}/heartbeat/", f"{API}/file=", f"{API}/file/", f"{API}/proxy=", f"{API}/call/"):
        if path.startswith(prefix):
            return prefix + "…"
    return repr(path[:48])


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class Edge:
    """What the middleware knows across requests, and the background work that keeps the limits.

    One per server. Reads Gradio's queue and sessions only through :mod:`gradio_adapter`.
    """

    def __init__(self, demo: Any, policy: EdgePolicy, translator: Translator | None = None) -> None:
        self.demo = demo
        self.policy = policy
        self.translator = translator or load_translations()
        self.session_limiter = VisitorLimiter(policy.session_rate)
        self.upload_limiter = VisitorLimiter(policy.upload_rate)
        self._last_upload_sweep = 0.0
        # ("stream", session or job id) while a result stream is open; ("page", session) while a heartbeat is.
        self.open: Counter[tuple[str, str]] = Counter()
        self.recent_new: OrderedDict[str, float] = OrderedDict()
        # Jobs dropped for want of a listener: a stream opened for one later would wait forever (Gradio sends
        # nothing for an abandoned job), so it is told at once.
        self.dropped_jobs: OrderedDict[str, None] = OrderedDict()
        self.loop: asyncio.AbstractEventLoop | None = None  # the server's, once it runs
        self._last_sweep = 0.0

    # ---- the queue ----------------------------------------------------------------------------------------------

    def install(self) -> Edge:
        """Count ``--max-queue`` against generations only: Gradio's own cap (``max_size``) counts every waiting
        event, so a flood of cheap page events (Stop, Clear history) filled it and refused visitors' Generate."""
        adapter.guard_queue_push(self.demo, self.admit_job)
        for facts in adapter.event_functions(self.demo):
            if facts.group == GENERATION_GROUP and not facts.queued:
                # Off the queue it would run on /gradio_api/run/<name>, past --max-queue and the concurrency limit.
                raise RuntimeError(f"the generation event {facts.api_name!r} must run through the queue")
        return self

    def admit_job(self, facts: adapter.EventFacts, joining: Mapping[str, int]) -> adapter.PushResult | None:
        is_generation = facts.group == GENERATION_GROUP

        def same_kind(group: str) -> bool:
            return (group == GENERATION_GROUP) == is_generation

        size = adapter.waiting_in_groups(self.demo, same_kind) + sum(n for g, n in joining.items() if same_kind(g))
        cap = self.policy.max_queue if is_generation else UI_QUEUE_MAX
        if size >= cap:
            log.info("refused queue join: %s queue full", "generation" if is_generation else "page-event")
            # Gradio's own words and status (503), which its front end and clients understand.
            return False, f"Queue is full. Max size is {cap} and size is {size}.", "queue_full"
        return None

    # ---- sessions -----------------------------------------------------------------------------------------------

    def sessions_in_use(self) -> set[str]:
        """Sessions a flood must not push out: a page open (heartbeat), a result stream open, a job queued or
        running."""
        used = {key for kind, key in self.open if kind in ("page", "stream")}
        used.update(job.session_hash for job in adapter.queued_jobs(self.demo))
        return used

    def evict(self, session_hash: str) -> None:
        """Forget a session now, with its history, log and files (Gradio's own eviction keeps the files)."""
        from .wiring import forget_session  # the page's own clean-up of a session (tab closed, idle)

        forget_session(self.demo, session_hash)

    def trim_sessions(self, room: int = 0) -> bool:
        """Evict idle sessions, least recently used first, until ``room`` more fit under ``--max-sessions``;
        returns False when the sessions in use alone fill it."""
        excess = adapter.session_count(self.demo) + room - self.policy.max_sessions
        if excess <= 0:
            return True
        in_use = self.sessions_in_use()
        victims = [s for s in adapter.sessions_oldest_first(self.demo) if s not in in_use][:excess]
        for session_hash in victims:
            self.evict(session_hash)
        if victims:
            log.info("evicted %d idle session(s) at --max-sessions %d", len(victims), self.policy.max_sessions)
        return len(victims) >= excess

    def admit_session(self, session_hash: str | None, client: str) -> Refusal | None:
        """A request that may start a session: new ones are rate limited per address and need room."""
        if session_hash is not None and adapter.session_exists(self.demo, session_hash):
            return None
        now = time.monotonic()
        counted = session_hash is not None and now - self.recent_new.get(session_hash, -RECENT_NEW_S) < RECENT_NEW_S
        if not counted:
            retry_after = self.session_limiter.hit(f"ip:{client}")
            if retry_after > 0:
                seconds = max(1, round(retry_after + 0.5))
                headers = [(b"retry-after", b"%d" % seconds)]
                return Refusal(429, "edge.sessions_rate_limited", {"seconds": seconds}, headers)
        if not self.trim_sessions(room=1):
            return Refusal(503, "edge.server_full", {}, [(b"retry-after", b"60")])
        if session_hash is not None and not counted:
            self.recent_new[session_hash] = now
            while len(self.recent_new) > RECENT_NEW_SESSIONS:
                self.recent_new.popitem(last=False)
        return None

    # ---- listeners ----------------------------------------------------------------------------------------------

    def listened(self, job: adapter.JobFacts) -> bool:
        return self.open[("stream", job.session_hash)] > 0 or self.open[("stream", job.event_id)] > 0

    async def drop_unlistened(self, now: float | None = None) -> int:
        """Drop every job that nobody has been listening to for ``--listener-timeout`` seconds."""
        now = time.monotonic() if now is None else now
        late = [
            job
            for job in adapter.queued_jobs(self.demo)
            if now - job.enqueued_at > self.policy.listener_timeout and not self.listened(job)
        ]
        for job in late:
            await adapter.drop_job(self.demo, job.event_id)
            log.info("dropped a %s job nobody listened to", "running" if job.running else "waiting")
            self.dropped_jobs[job.event_id] = None
            while len(self.dropped_jobs) > RECENT_NEW_SESSIONS:
                self.dropped_jobs.popitem(last=False)
        return len(late)

    # ---- files --------------------------------------------------------------------------------------------------

    def sweep_strays(self, min_age_s: float = STRAY_MIN_AGE_S) -> int:
        """Delete upload temporaries Gradio left in its folder (an upload aborted midway leaves a ``tmpXXXX``
        file nothing else deletes); returns how many."""
        return sweep_upload_leftovers(adapter.upload_folder(), min_age_s)

    def sweep_unused_uploads(self, max_age_s: float = UNUSED_UPLOAD_S, now: float | None = None) -> int:
        """Delete every upload older than ``max_age_s`` that no waiting or running job names (a request that uses
        an upload deletes it itself; what is left was never used, or its request never ran)."""
        now = time.time() if now is None else now
        held = adapter.files_named_by_jobs(self.demo) if max_age_s > 0 else set()
        removed = 0
        for path in adapter.gradio_uploads(self.demo):
            if path in held:
                continue
            try:
                age = now - Path(path).lstat().st_mtime
            except FileNotFoundError:
                age = max_age_s  # gone already: only Gradio's notes of it are left
            if age >= max_age_s:
                adapter.delete_gradio_upload(self.demo, path)
                removed += 1
        if removed:
            log.info("deleted %d upload(s) no request used", removed)
        return removed

    def admit_upload(self, client: str, declared: int) -> Refusal | None:
        """An upload request from ``client`` declaring ``declared`` bytes: counted against its address, once per
        ``max_file_bytes`` (a request of four large pictures counts four)."""
        per_file = self.policy.max_file_bytes or declared or 1
        cost = max(1, -(-declared // per_file))
        retry_after = self.upload_limiter.hit(f"ip:{client}", cost=cost)
        if retry_after > 0:
            seconds = max(1, round(retry_after + 0.5))
            return Refusal(429, "edge.uploads_rate_limited", {"seconds": seconds}, [(b"retry-after", b"%d" % seconds)])
        return None

    # ---- the schedule -------------------------------------------------------------------------------------------

    async def run_forever(self) -> None:
        """Run on the server's event loop (its lifespan), where Gradio's queue lives."""
        self.loop = asyncio.get_running_loop()
        self.sweep_strays()
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            try:
                await self.drop_unlistened()
                self.trim_sessions()
                if time.monotonic() - self._last_sweep >= SWEEP_INTERVAL_S:
                    self._last_sweep = time.monotonic()
                    self.sweep_strays()
                if time.monotonic() - self._last_upload_sweep >= UPLOAD_SWEEP_S:
                    self._last_upload_sweep = time.monotonic()
                    self.sweep_unused_uploads()
            except Exception:  # noqa: BLE001 - the watch must go on; the log says what broke
                log.exception("the security watch failed once")

    def at_shutdown(self) -> None:
        """Sweep every stray upload file and every upload, however young: no upload outlives the server."""
        self.sweep_strays(min_age_s=0.0)
        self.sweep_unused_uploads(max_age_s=0.0)

    # ---- requests -----------------------------------------------------------------------------------------------

    def client_of(self, scope: Scope) -> str:
        """The client address after uvicorn's proxy-header handling (its middleware runs before this one)."""
        peer = scope.get("client")
        return canonical_address(peer[0] if peer else None)

    def body_limit(self, path: str) -> int:
        return self.policy.upload_limit() if path in UPLOAD_ROUTES else self.policy.max_body_bytes

    def check_target(self, method: str, path: str, query: Mapping[str, list[str]]) -> Refusal | None:
        """Refusals decided by the route alone, before any of the body is read."""
        for name in ("session_hash", "upload_id"):
            if any(not SESSION_HASH.fullmatch(v) for v in query.get(name, [])):
                return Refusal(400, "edge.bad_session")
        for prefix in (f"{API}/file=", f"{API}/file/"):
            if path.startswith(prefix) and path[len(prefix) :].lower().startswith(("http:", "https:")):
                return Refusal(403, "edge.remote_files")
        if path.startswith(f"{API}/proxy="):
            return Refusal(403, "edge.remote_files")
        if path == RECORDING:
            return Refusal(403, "edge.recordings_off")
        if path in UPLOAD_ROUTES and self.policy.upload_limit() <= 0:
            return Refusal(403, "edge.uploads_off")
        heartbeat = _HEARTBEAT.fullmatch(path)
        if heartbeat and not SESSION_HASH.fullmatch(heartbeat.group(1)):
            return Refusal(400, "edge.bad_session")
        if method == "GET" and path == f"{API}/queue/data":
            sessions = query.get("session_hash", [])
            if len(sessions) != 1 or not adapter.has_messages_for(self.demo, sessions[0]):
                return Refusal(404, "edge.unknown_job")
        stream = _CALL_STREAM.fullmatch(path) if method == "GET" else None
        if stream and stream.group(1) in self.dropped_jobs:
            return Refusal(410, "edge.job_dropped", {"seconds": f"{self.policy.listener_timeout:g}"})
        if stream and not (EVENT_ID.fullmatch(stream.group(1)) and adapter.job_exists(self.demo, stream.group(1))):
            return Refusal(404, "edge.unknown_job")
        return None

    def check_body(self, path: str, body: bytes, client: str) -> tuple[Refusal | None, bool]:
        """Refusals decided by a JSON body (event, values, session); and whether the request may start a new
        session (then the sessions are trimmed once it is answered)."""
        try:
            payload = json.loads(body) if body else None
        except (ValueError, RecursionError):
            return None, False  # Gradio answers malformed JSON with a 422 of its own
        if not isinstance(payload, dict):
            return None, False
        session = payload.get("session_hash")
        if isinstance(session, str) and not SESSION_HASH.fullmatch(session):
            return Refusal(400, "edge.bad_session"), False
        session = session if isinstance(session, str) else None
        data, fn_index = payload.get("data"), payload.get("fn_index")
        facts: adapter.EventFacts | None
        if path in (f"{API}/queue/join", f"{API}/queue/join/"):
            if not isinstance(fn_index, int) or isinstance(fn_index, bool):
                return None, False  # Gradio's own 400/422, without a traceback
            facts = adapter.event_function(self.demo, fn_index)
            if facts is None:
                return Refusal(404, "edge.unknown_event"), False
            if session is None:
                return None, False  # Gradio's own 400: a join names its session
        elif (run := _RUN.fullmatch(path)) is not None:
            if isinstance(fn_index, int) and not isinstance(fn_index, bool):
                facts = adapter.event_function(self.demo, fn_index)
            else:
                facts = adapter.event_function_named(self.demo, run.group(1))
            if facts is None or facts.queued:
                # A queued event (Generate) is never run directly: that would skip the queue and its limits.
                return Refusal(404, "edge.unknown_event"), False
        elif (call := _CALL_V2.fullmatch(path)) is not None:
            facts = adapter.event_function_named(self.demo, call.group(1))
            if facts is None or not facts.public:
                return Refusal(404, "edge.unknown_event"), False
            session, data = None, None  # Gradio starts a new session for every such call
        elif (call := _CALL.fullmatch(path)) is not None:
            facts = adapter.event_function_named(self.demo, call.group(1))
            if facts is None:
                return Refusal(404, "edge.unknown_event"), False
            data = None  # values in the API's order, which Gradio maps itself
        elif path in (f"{API}/component_server", f"{API}/component_server/"):
            if not adapter.has_server_function(self.demo, payload.get("component_id"), payload.get("fn_name")):
                return Refusal(404, "edge.unknown_event"), False
            facts = None
        else:
            return None, False
        if facts is not None and isinstance(data, list) and len(data) != facts.inputs:
            return Refusal(422, "edge.wrong_values", {"expected": facts.inputs, "got": len(data)}), False
        new = session is None or not adapter.session_exists(self.demo, session)
        return self.admit_session(session, client), new

    def stream_keys(self, method: str, path: str, query: Mapping[str, list[str]]) -> list[tuple[str, str]]:
        """What an open request tells about listeners: a result stream for a session or a job, or a page open."""
        if method != "GET":
            return []
        if path == f"{API}/queue/data":
            return [("stream", s) for s in query.get("session_hash", [])[:1]]
        if (stream := _CALL_STREAM.fullmatch(path)) is not None:
            event_id = stream.group(1)
            session = adapter.session_of_job(self.demo, event_id)
            return [("stream", event_id)] + ([("stream", session)] if session else [])
        if (heartbeat := _HEARTBEAT.fullmatch(path)) is not None:
            return [("page", heartbeat.group(1))]
        return []

    def message(self, refusal: Refusal, scope: Scope) -> str:
        lang = language_of(_header(scope, b"accept-language"))
        return self.translator.t(refusal.key, lang, **refusal.params)


class EdgeMiddleware:
    """ASGI middleware for Gradio's app: limits, refusals and headers (see the module's docstring)."""

    def __init__(self, app: ASGIApp, edge: Edge) -> None:
        self.app = app
        self.edge = edge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        edge = self.edge
        method, path = scope["method"], scope["path"]
        nonce = secrets.token_urlsafe(16)
        send = self._with_headers(send, nonce, method)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        declared = _header(scope, b"content-length")
        unread = declared not in (None, "0") or _header(scope, b"transfer-encoding") is not None
        refusal = edge.check_target(method, path, query)
        if refusal is not None:
            await self._refuse(refusal, scope, send, unread_body=unread)
            return
        limit = edge.body_limit(path)
        too_large = Refusal(413, "edge.too_large", {"kb": limit // 1024})
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(too_large, scope, send, unread_body=True)
            return
        if path in UPLOAD_ROUTES:
            # Uploads stream through to Gradio's parser; with a declared size the server itself stops at it. (A
            # GET of an upload's progress has no body.)
            if declared is None and method != "GET":
                await self._refuse(Refusal(411, "edge.length_required"), scope, send, unread_body=unread)
                return
            if method == "POST" and path == UPLOAD:
                refusal = edge.admit_upload(edge.client_of(scope), int(declared) if declared.isdigit() else 0)
                if refusal is not None:
                    await self._refuse(refusal, scope, send, unread_body=unread)
                    return
                await self._upload(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        try:
            body = await _read_body(receive, limit)
        except _ClientGone:
            return
        if body is None:  # larger than the limit: refused before the rest arrives
            await self._refuse(too_large, scope, send, unread_body=True)
            return
        new_session = False
        if method == "POST":
            refusal, new_session = edge.check_body(path, body, edge.client_of(scope))
            if refusal is not None:
                await self._refuse(refusal, scope, send, unread_body=False)
                return
        keys = edge.stream_keys(method, path, query)
        edge.open.update(keys)
        try:
            await self.app(scope, _replay(body, receive), send)
        finally:
            edge.open.subtract(keys)
            for key in keys:
                if edge.open[key] <= 0:
                    del edge.open[key]
            if new_session:
                edge.trim_sessions()

    async def _upload(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Gradio's upload route, with the request's files counted and measured as its body streams in: the chunk
        that would start one file too many, or take a file past its size, never reaches Gradio. Gradio is made to
        delete the files it wrote for the request, and the visitor gets the edge's refusal instead of its answer."""
        policy = self.edge.policy
        scanner = UploadScanner.of(_header(scope, b"content-type"), policy.max_upload_files, policy.max_file_bytes)
        refused: list[Refusal] = []

        async def counted() -> Message:
            message = await receive()
            if scanner is not None and message["type"] == "http.request" and not refused:
                refusal = scanner.feed(message.get("body", b""))
                if refusal is not None:
                    refused.append(refusal)
                    raise adapter.upload_refusal(refusal.key)
            return message

        async def answered(message: Message) -> None:
            if not refused:
                await send(message)
            elif message["type"] == "http.response.start":  # Gradio's own words for our refusal: ours instead
                await self._refuse(refused[0], scope, send, unread_body=True)

        await self.app(scope, counted, answered)

    async def _refuse(self, refusal: Refusal, scope: Scope, send: Send, *, unread_body: bool) -> None:
        """A short JSON answer (``{"detail": ...}``, as Gradio's own refusals) and one log line."""
        log.info("refused %s %s: %s", scope["method"], route_label(scope["path"]), refusal.key)
        body = json.dumps({"detail": self.edge.message(refusal, scope)}, ensure_ascii=False).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)), *refusal.headers]
        if unread_body:
            headers.append((b"connection", b"close"))  # the rest of the body is never read: end the connection
        await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _with_headers(self, send: Send, nonce: str, method: str) -> Send:
        """Add the security headers to every response; an HTML page's scripts get the nonce its CSP names."""
        frame_ancestors = self.edge.policy.frame_ancestors
        held: list[Message] = []

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _OURS]
                content_type = dict((k.lower(), v) for k, v in headers).get(b"content-type", b"")
                is_page = content_type.startswith(b"text/html") and method != "HEAD"
                headers += security_headers(frame_ancestors, nonce if is_page else None)
                message = {**message, "headers": headers}
                if is_page and not any(k.lower() == b"content-encoding" for k, _ in headers):
                    held.append(message)
                    return
            elif message["type"] == "http.response.body" and held:
                held.append(message)
                size = sum(len(m.get("body", b"")) for m in held[1:])
                if message.get("more_body", False) and size <= MAX_HTML_BYTES:
                    return
                start, *parts = held
                held.clear()
                if message.get("more_body", False):  # too large to rewrite: as it was (its scripts stay blocked)
                    for part in [start, *parts]:
                        await send(part)
                    return
                page = add_nonce(b"".join(p.get("body", b"") for p in parts), nonce)
                headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
                headers.append((b"content-length", b"%d" % len(page)))
                await send({**start, "headers": headers})
                await send({"type": "http.response.body", "body": page})
                return
            await send(message)

        return wrapped


_OURS = {b"x-content-type-options", b"referrer-policy", b"content-security-policy", b"x-frame-options"}


class UploadScanner:
    """Reads an upload's multipart body alongside Gradio's parser: counts its parts (each a file, as the page and
    gradio_client send them) and the bytes of each, and says when one passes a limit."""

    def __init__(self, boundary: bytes, max_files: int, max_file_bytes: int) -> None:
        self.max_files = max_files
        self.max_file_bytes = max_file_bytes
        self.parts = 0
        self.part_bytes = 0
        self.refusal: Refusal | None = None
        self.malformed = False
        self.parser = MultipartParser(
            boundary, callbacks={"on_part_begin": self._part_begins, "on_part_data": self._part_data}
        )

    @classmethod
    def of(cls, content_type: str | None, max_files: int, max_file_bytes: int) -> UploadScanner | None:
        """A scanner for a multipart body, or None for anything else (Gradio refuses that itself, unread)."""
        kind, options = parse_options_header(content_type or "")
        boundary = options.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            return None
        return cls(boundary, max_files, max_file_bytes)

    def _part_begins(self) -> None:
        self.parts += 1
        self.part_bytes = 0
        if self.parts > self.max_files and self.refusal is None:
            self.refusal = Refusal(400, "edge.too_many_files", {"max": self.max_files})

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self.part_bytes += end - start
        if self.max_file_bytes and self.part_bytes > self.max_file_bytes and self.refusal is None:
            self.refusal = Refusal(413, "edge.file_too_large", {"max_mb": f"{self.max_file_bytes / 2**20:g}"})

    def feed(self, chunk: bytes) -> Refusal | None:
        """Read the next piece of the body; the refusal once a limit is passed (a body Gradio would find malformed
        is left to Gradio)."""
        if self.refusal is None and not self.malformed and chunk:
            try:
                self.parser.write(chunk)
            except Exception:  # noqa: BLE001 - malformed: Gradio's own parser refuses it with a 400
                self.malformed = True
        return self.refusal


class _ClientGone(Exception):
    """The client disconnected before its body arrived."""


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None as soon as it passes ``limit`` bytes (the rest is never read)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body already read, then the connection's own messages (Gradio's streams wait for the disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def sweep_upload_leftovers(folder: Path, min_age_s: float, now: float | None = None) -> int:
    """Delete upload temporaries (``tmp*`` regular files at the top of Gradio's folder) untouched for
    ``min_age_s`` seconds; a finished upload is moved into a folder of its own, so these are aborted ones."""
    now = time.time() if now is None else now
    removed = 0
    try:
        entries: Iterable[Path] = list(folder.iterdir())
    except FileNotFoundError:
        return 0
    for path in entries:
        try:
            info = path.lstat()
            if path.name.startswith("tmp") and stat.S_ISREG(info.st_mode) and now - info.st_mtime >= min_age_s:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    if removed:
        log.info("swept %d stray upload file(s)", removed)
    return removed
