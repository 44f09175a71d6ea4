"""What each event of the page does: module-level functions of plain values that return ``{component: value}``.

Each handler takes a :class:`Context` first (the page's components and the services behind them); ``wiring.py``
binds it, so Gradio sees the remaining parameters: the event's inputs, then ``gr.Request`` where the handler needs
the visitor's language or address. A handler that changes nothing returns ``gr.skip()``. Tests call these functions
directly, without a browser or a server.

Messages are made here, in the visitor's language (from Accept-Language): Gradio shows ``gr.Error`` text as it is.
"""

from __future__ import annotations

import asyncio
import contextvars
import html
import re
import secrets
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from .. import limits, parameters
from ..config import Settings
from ..enhancer import PromptEnhancer
from ..errors import AppError, EngineError, InputError
from ..i18n import Translator, language_of
from ..images import check_upload_header, intake_uploads
from ..maintenance import MaintenanceFile
from ..models.families import COGVIEW4, SizeRules
from ..models.loading import ModelState, PipelineLoader
from ..ratelimit import canonical_address
from ..requests import GenerationRequest, check_reference_count
from ..service import API_FIELDS, GenerationService, Outcome
from ..sessions import HistoryEntry, Session, SessionEnded
from ..sizes import SizePreset, largest_legal_side, size_for_reference, size_problem
from ..styles import NO_STYLE, StyleBook
from . import gradio_adapter as adapter
from .layout import CUSTOM_SIZE, Page, default_preset, preset_label

# Gradio finds the progress tracker by this default value (its documented pattern).
PROGRESS = gr.Progress()
# Set on the request by the /generate validator, read by the handler: the job's wait in the queue.
ENQUEUED_AT = "glmimage_enqueued_at"


@dataclass
class Context:
    """What the handlers of one page share: its components and the services behind them."""

    page: Page
    demo: gr.Blocks
    settings: Settings
    service: GenerationService
    translator: Translator
    styles: StyleBook
    loader: PipelineLoader
    presets: list[SizePreset]
    files_root: str
    enhancer: PromptEnhancer | None = None
    maintenance: MaintenanceFile | None = None


# ---- the visitor: language, address, messages ------------------------------------------------------------------


def language(request: gr.Request) -> str:
    return language_of(request.headers.get("accept-language"))


def client_address(request: Any) -> str:
    """The visitor's address for rate limits: uvicorn's client address, after its proxy-header handling (which
    believes X-Forwarded-For only from ``--trusted-proxies``). Written canonically, so one visitor cannot get
    several keys by spelling an address differently."""
    client = request.client
    return canonical_address(client.host if client is not None else None)


def message(translator: Translator, error: AppError, lang: str) -> str:
    """Any AppError in the visitor's language, field names included: the one place errors are translated."""
    if error.key.startswith("load."):  # the model could not load: ``key`` says why
        return translator.t("error.model_unavailable", lang, reason=translator.t(error.key, lang))
    params = dict(error.params)
    if "field" in params:
        params["field"] = translator.t(f"field.{params['field']}", lang)
    return translator.t(error.key, lang, **params)


def field_at_fault(error: AppError) -> str:
    """The /generate parameter a refusal is shown on: the field it names, else width for size rules, style for an
    unknown style, and the prompt for everything else (limits)."""
    if "field" in error.params:
        return str(error.params["field"])
    if "width" in error.params:
        return "width"
    return "style" if error.key == "error.unknown_style" else "prompt"


def as_gradio_error(ctx: Context, error: AppError, lang: str) -> gr.Error:
    if error.key.startswith("load."):
        return gr.Error(message(ctx.translator, error, lang), print_exception=False)
    title = ctx.translator.t("error.title", lang)
    return gr.Error(message(ctx.translator, error, lang), title=title, print_exception=False)


# ---- model status and privacy notice ---------------------------------------------------------------------------


def show_status(ctx: Context, request: gr.Request) -> dict[Any, Any]:
    """The status line (loading, ready, failed, test model) and the privacy notice, polled while loading."""
    lang, t, loader, settings = language(request), ctx.translator.t, ctx.loader, ctx.settings
    names = {"model": loader.model_name}
    if loader.state is ModelState.WARMING:
        text = t("status.warming", lang, device=loader.device.type, dtype=loader.dtype_name, **names)
    elif loader.state is ModelState.LOADING:
        text = t("status.loading", lang, **names)
    elif loader.state is ModelState.READY:
        text = t("status.ready", lang, device=loader.device.type, dtype=loader.dtype_name, **names)
    else:
        text = t("status.failed", lang, reason=t(loader.error_key, lang))
    if loader.choice is not None and loader.choice.is_tiny:
        text += "\n\n" + t("status.auto_tiny" if loader.choice.auto_tiny else "status.tiny", lang)
    notice = t(
        "privacy.notice", lang, session_ttl=round(settings.session_ttl / 60), file_ttl=round(settings.file_ttl / 60)
    )
    notice += " " + t("privacy.log_on" if settings.log_prompts else "privacy.log_off", lang)
    if can_edit(ctx):
        notice += " " + t("privacy.pictures", lang)
    if ctx.enhancer is not None:
        notice += " " + t("privacy.enhancer", lang)
    if settings.auth_file:  # Gradio's login cookie, the one cookie such a server sets
        notice += " " + t("privacy.login", lang)
    if settings.contact:  # the support line in the privacy notice too
        notice += "\n\n" + t("privacy.contact", lang, contact=settings.contact)
    page = ctx.page
    return {
        page.model_status: text,
        page.status_timer: gr.Timer(active=loader.state in (ModelState.LOADING, ModelState.WARMING)),
        page.privacy_notice: notice,
    }


def show_operator_notes(ctx: Context, request: gr.Request) -> dict[Any, Any]:
    """The banner while the maintenance file exists (in the visitor's language), and the support line."""
    lang, t, settings = language(request), ctx.translator.t, ctx.settings
    notice = ctx.maintenance.current() if ctx.maintenance is not None else None
    banner = (notice.text(lang) or t("maintenance.default", lang)) if notice is not None else ""
    contact = t("footer.contact", lang, contact=settings.contact) if settings.contact else ""
    return {
        ctx.page.maintenance_banner: gr.update(value=banner, visible=bool(banner)),
        ctx.page.contact_line: gr.update(value=contact, visible=bool(contact)),
    }


# ---- generation -----------------------------------------------------------------------------------------------------


def jobs_of_client(demo: gr.Blocks, client: str) -> int:
    """This visitor's GPU jobs (Generate, Variations) queued or running, read from Gradio's own queue so the count
    never drifts."""
    return sum(
        1
        for event in adapter.waiting_and_running_events(demo)
        if adapter.event_api_name(event) in adapter.GPU_EVENTS
        and canonical_address(adapter.event_client_host(event)) == client
    )


def client_gone(demo: gr.Blocks, session_hash: str | None) -> bool:
    """True once the visitor's page closed or their event stream dropped, so their job can stop early."""
    if not session_hash:
        return False
    if adapter.session_closed(demo, session_hash):
        return True
    return any(
        adapter.event_session_hash(event) == session_hash and not adapter.event_alive(event)
        for event in adapter.running_events(demo)
    )


async def generate(
    ctx: Context,
    prompt: str,
    negative_prompt: str,
    style: str,
    width: int,
    height: int,
    num_images: int,
    seed: int,
    randomize_seed: bool,
    num_inference_steps: int,
    guidance_scale: float,
    session: Session,
    request: gr.Request,
    progress: gr.Progress = PROGRESS,
) -> dict[Any, Any]:
    """Generate images (the /generate API): returns them, the seed used, and the parameters with timings.
    Async: a cancelled event stops its job (see :func:`run_job`)."""
    lang = language(request)
    raw = dict(
        prompt=prompt,
        negative_prompt=negative_prompt,
        style=style,
        width=width,
        height=height,
        num_images=num_images,
        seed=seed,
        randomize_seed=randomize_seed,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
    )
    enqueued, queue_s = queue_times(request)
    try:
        # The validator already passed these values; this rebuilds the typed request from them.
        req = ctx.service.validated(raw)
        outcome = await run_job(ctx, req, session, request, progress, enqueued, queue_s)
    except (EngineError, InputError) as exc:
        return ended_early(ctx, exc, session, lang)
    return shown_outcome(ctx, outcome, session)


def queue_times(request: gr.Request) -> tuple[float, float]:
    """When the job joined the queue (marked by its validator; now, where none ran) and how long it waited."""
    enqueued = adapter.request_mark(request, ENQUEUED_AT) or time.monotonic()
    return enqueued, time.monotonic() - enqueued


def shown_outcome(ctx: Context, outcome: Outcome, session: Session) -> dict[Any, Any]:
    """What a GPU job's event returns (/generate's and /edit's answer): the images, the seed used, the details."""
    page = ctx.page
    return {
        page.gallery: outcome.files,
        page.seed_used: outcome.seed,
        page.details: outcome.details,
        page.session: session,
    }


async def run_job(
    ctx: Context,
    req: GenerationRequest,
    session: Session,
    request: gr.Request,
    progress: Any,
    enqueued: float,
    queue_s: float,
) -> Outcome:
    """One admitted request (Generate, Variations, Edit) on the engine, with its progress ("planning…", then
    "step i/N") and its stops: the visitor's Stop, a cancelled event, a closed page.

    The job runs on a worker thread: when Gradio cancels this event (an API client's ``job.cancel()``, which
    reports CANCELLED at once) the await is where the cancellation lands, and the job is told to stop at its next
    step, freeing the worker for the next in line."""
    lang = language(request)
    # The steps run on the engine's thread; Gradio finds this event's progress bar through context
    # variables, which a plain call from that thread would not see (the page showed no steps).
    event_context = contextvars.copy_context()
    step_text = ctx.translator.t("status.progress", lang)
    phase_text = ctx.translator.t("status.planning", lang)
    cancelled = threading.Event()

    def on_phase(phase: str) -> None:
        # GLM-Image plans (writes its image tokens) before its steps, with no step to report meanwhile.
        if phase == "planning":
            event_context.run(progress, None, desc=phase_text)

    try:
        return await asyncio.to_thread(
            ctx.service.run,
            req,
            session,
            queue_s,
            on_step=lambda done, total: event_context.run(progress, (done, total), desc=step_text),
            should_stop=lambda: (
                cancelled.is_set()
                or session.stop_requested_at >= enqueued - 0.001
                or client_gone(ctx.demo, request.session_hash)
            ),
            on_phase=on_phase,
        )
    except asyncio.CancelledError:
        cancelled.set()
        raise


def ended_early(ctx: Context, exc: AppError, session: Session, lang: str) -> dict[Any, Any]:
    """A job that stopped (the visitor's Stop: a notice, nothing else changes) or failed (a message in the
    visitor's language, raised as the event's error)."""
    if exc.key == "status.stopped":
        gr.Info(message(ctx.translator, exc, lang))
        # An ended session never comes back as the page's state.
        return {ctx.page.session: gr.skip() if session.disposed else session}
    raise as_gradio_error(ctx, exc, lang) from None


def after_generation(ctx: Context, session: Session, details: dict | None, request: gr.Request) -> dict[Any, Any]:
    """The timings line under the result, and the history and log with the new entry (and, where the page can
    edit, no before/after view: this result has no "before")."""
    lang = language(request)
    updates = history_and_log(ctx, session, lang)
    if details:
        line = ctx.translator.t("timings.line", lang, seed=details["seed"], **details["timings"])
        updates[ctx.page.timings] = line
        if can_edit(ctx):
            updates[ctx.page.before_after] = gr.update(value=None, visible=False)
    return updates


def history_and_log(ctx: Context, session: Session, lang: str = "en") -> dict[Any, Any]:
    """The history gallery (hidden while empty; an edit's caption says so, with its number of pictures), the
    session log, and a fresh log file to download."""
    page = ctx.page

    def caption(entry: HistoryEntry) -> str:
        pictures = entry.request.get("reference_images")
        edited = f"{ctx.translator.t('history.edit_caption', lang, count=pictures)} · " if pictures else ""
        return f"#{entry.seed} · {edited}{entry.request['prompt'][:60]}"

    items = [(entry.files[0], caption(entry)) for entry in session.history if entry.files]
    log_file = session.new_file(".json")
    for old in session.folder.glob("*.json"):
        if old != log_file:
            old.unlink(missing_ok=True)
    log_file.write_text(session.log_json(), encoding="utf-8")
    return {
        page.history: gr.update(value=items, visible=bool(items)),
        page.history_empty: gr.update(visible=not items),
        page.session_log: session.log,
        page.log_download: gr.DownloadButton(value=str(log_file)),
    }


def request_stop(session: Session) -> None:
    """Stop: this session's jobs queued before now end at their next step."""
    session.stop_requested_at = time.monotonic()


# ---- editing (/edit and the Edit tab) -------------------------------------------------------------------------------

# Where a picture of an edit comes from: the page's Edit box (taken in when it was dropped, kept while it is there),
# or Gradio's upload route (an API call: taken in by the job, gone when it ends).
PICTURE, UPLOAD = "picture", "upload"


def can_edit(ctx: Context) -> bool:
    """Whether the page's model takes pictures (GLM-Image): the Edit tab, the before/after view, uploads to edit."""
    return ctx.service.family.takes_reference_images


def picture_items(images: Any) -> list[Any]:
    """The pictures an edit names, as a list (one file alone is a list of one; nothing is none)."""
    if images is None:
        return []
    return list(images) if isinstance(images, (list, tuple)) else [images]


def file_path_of(item: Any) -> str | None:
    """The server path in one picture as it arrives: a file (``{"path": ...}``, gradio_client's ``handle_file``) or
    an item of the page's Edit box (``{"image": {"path": ...}, "caption": ...}``); None for anything else."""
    if isinstance(item, dict) and isinstance(item.get("image"), dict):
        item = item["image"]
    path = item.get("path") if isinstance(item, dict) else None
    return path if isinstance(path, str) else None


def edit_sources(ctx: Context, images: Any, session: Session, max_bytes: int) -> list[tuple[str, str]]:
    """Where each picture of an edit comes from, checked as far as its header goes (cheap enough for the validator):
    ``(PICTURE, path)`` for one in this session's Edit box, ``(UPLOAD, path)`` for a file sent to Gradio's upload
    route. Anything else is refused: a path a client merely names may be another visitor's file."""
    family = ctx.service.family
    items = picture_items(images)
    check_reference_count(len(items), family)
    sources = []
    for item in items:
        path = file_path_of(item)
        if path is not None and path in session.pictures and Path(path).is_file():
            sources.append((PICTURE, path))
        elif path is not None and adapter.is_gradio_upload(ctx.demo, path):
            check_upload_header(
                path, max_bytes=max_bytes, max_aspect=family.max_reference_aspect, model=family.display_name
            )
            sources.append((UPLOAD, path))
        else:
            raise InputError("error.picture_missing", field="images")
    return sources


def discard_uploads(ctx: Context, images: Any) -> None:
    """Delete the files of ``images`` that Gradio's upload route wrote, with Gradio's notes of them: read by the
    intake, or refused; nothing of an upload outlives the request that named it."""
    for item in picture_items(images):
        path = file_path_of(item)
        if path is not None and adapter.is_gradio_upload(ctx.demo, path):
            adapter.delete_gradio_upload(ctx.demo, path)


async def edit(
    ctx: Context,
    prompt: str,
    images: list[Any],
    width: int,
    height: int,
    num_images: int,
    seed: int,
    randomize_seed: bool,
    num_inference_steps: int,
    guidance_scale: float,
    session: Session,
    request: gr.Request,
    progress: gr.Progress = PROGRESS,
) -> dict[Any, Any]:
    """Edit 1 to N pictures (the /edit API, and Edit on the page): returns what /generate returns, the images, the
    seed used, and the parameters (with ``reference_images``, the number of pictures) with timings.

    Pictures sent with the call are taken in now (``glmimage.images``: checked, rebuilt from their pixels, stored
    in the session's folder), Gradio's upload copies deleted as soon as they are read, and the clean copies deleted
    when this request ends. Pictures of the page's Edit box were taken in when they were dropped, and stay while
    they are in the box. Async: a cancelled event stops its job (see :func:`run_job`)."""
    lang, page = language(request), ctx.page
    raw = dict(
        prompt=prompt,
        width=width,
        height=height,
        num_images=num_images,
        seed=seed,
        randomize_seed=randomize_seed,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
    )
    enqueued, queue_s = queue_times(request)
    family, max_bytes = ctx.service.family, ctx.settings.max_upload_bytes
    made: list[Path] = []  # this request's own clean copies
    try:
        try:
            sources = edit_sources(ctx, images, session, max_bytes)
            uploads = [path for kind, path in sources if kind == UPLOAD]
            if uploads:
                taken = await asyncio.to_thread(intake_uploads, uploads, session, family, max_bytes)
                made = [picture.path for picture in taken]
        finally:
            discard_uploads(ctx, images)
        copies = iter(made)
        paths = [str(next(copies)) if kind == UPLOAD else path for kind, path in sources]
        in_box = [path for kind, path in sources if kind == PICTURE]
        if in_box:  # from the page: what its Edit box no longer shows is deleted now
            forget_removed_pictures(session, in_box)
        req = ctx.service.validated(raw, images=paths)
        outcome = await run_job(ctx, req, session, request, progress, enqueued, queue_s)
    except (EngineError, InputError) as exc:
        return ended_early(ctx, exc, session, lang)
    except SessionEnded:  # the page closed while its pictures were read: nothing is kept
        return {page.session: gr.skip()}
    finally:
        for path in made:
            path.unlink(missing_ok=True)
        # Gradio keeps the last value of each input of a session: the pictures' original file names.
        adapter.forget_input_value(ctx.demo, request.session_hash, page.edit_files)
    return shown_outcome(ctx, outcome, session)


def after_edit(
    ctx: Context,
    session: Session,
    details: dict | None,
    pictures: Any,
    shown: Any,
    request: gr.Request,
) -> dict[Any, Any]:
    """After an edit: the timings line, the history and log, and the before/after view of its first picture and
    its first result (on the page; an API client's pictures are gone by now, and it gets no view)."""
    updates = after_generation(ctx, session, details, request)
    before = [file_path_of(item) for item in picture_items(pictures)]
    after = [file_path_of(item) for item in picture_items(shown)]
    if details and before and after and before[0] in session.pictures and after[0] is not None:
        updates[ctx.page.before_after] = gr.update(value=(before[0], after[0]), visible=True)
    return updates


def forget_removed_pictures(session: Session, in_box: list[str]) -> None:
    """Delete the clean copies of pictures no longer in the Edit box (taken out, or the box cleared)."""
    with session.lock:
        for path in session.pictures:
            if path not in in_box:
                Path(path).unlink(missing_ok=True)
        session.pictures = [path for path in session.pictures if path in in_box]
        session.picture_uploads = {
            upload: picture for upload, picture in session.picture_uploads.items() if picture in session.pictures
        }


def take_pictures(ctx: Context, pictures: Any, session: Session, request: gr.Request) -> dict[Any, Any]:
    """Pictures dropped, chosen or pasted into the Edit box: each new one goes through the intake now (its clean
    copy into the session's folder; Gradio's upload copy deleted at once), and the box shows the clean copies. The
    output size follows the first picture, until the visitor changes it. A refused picture is left out, with a
    warning that says why."""
    lang, page, family = language(request), ctx.page, ctx.service.family
    kept: list[str] = []
    arrived: list[str] = []
    for item in picture_items(pictures):
        path = file_path_of(item)
        if path is None:
            continue
        if path in session.pictures:
            kept.append(path)
        elif session.picture_uploads.get(path) in session.pictures:  # taken in while this upload was on its way
            kept.append(session.picture_uploads[path])
        elif adapter.is_gradio_upload(ctx.demo, path):
            arrived.append(path)
    problems: list[AppError] = []
    fresh = []
    try:
        for path in arrived:
            if len(kept) + len(fresh) >= family.max_reference_images:
                count = len(kept) + len(arrived)
                problems.append(
                    InputError(
                        "error.too_many_images",
                        field="images",
                        count=count,
                        max=family.max_reference_images,
                        model=family.display_name,
                    )
                )
                break
            try:
                [picture] = intake_uploads([path], session, family, ctx.settings.max_upload_bytes)
            except InputError as exc:
                problems.append(exc)
                continue
            fresh.append(picture)
            session.picture_uploads[path] = str(picture.path)
    except SessionEnded:
        return {page.session: gr.skip()}
    finally:
        for path in arrived:
            adapter.delete_gradio_upload(ctx.demo, path)
        adapter.forget_input_value(ctx.demo, request.session_hash, page.edit_pictures)
    now_in_box = kept + [str(picture.path) for picture in fresh]
    with session.lock:
        session.pictures = list(dict.fromkeys([*session.pictures, *now_in_box]))
    forget_removed_pictures(session, now_in_box)
    updates: dict[Any, Any] = {page.edit_pictures: now_in_box or None, page.session: session}
    if fresh and not kept:  # a first picture: the output size follows it
        width, height = size_for_reference(fresh[0].width, fresh[0].height, family)
        updates |= {page.width: width, page.height: height, page.size_preset: preset_label(ctx.presets, width, height)}
        gr.Info(ctx.translator.t("info.pictures_ready", lang, count=len(now_in_box), width=width, height=height))
    for problem in problems:
        gr.Warning(message(ctx.translator, problem, lang))
    return updates


def drop_picture(ctx: Context, session: Session, event: gr.EventData) -> dict[Any, Any]:
    """A picture taken out of the Edit box (its ×): its clean copy is deleted now. The box says which one as
    ``{"file": {"path": ...}, "index": i}``."""
    payload = adapter.event_payload(event)
    path = file_path_of(payload.get("file") if isinstance(payload, dict) else None)
    with session.lock:
        if path is not None and path in session.pictures:
            forget_removed_pictures(session, [p for p in session.pictures if p != path])
    return {ctx.page.session: session}


# ---- variations -----------------------------------------------------------------------------------------------------


class OverallProgress:
    """The steps of one of several generations, reported as steps of them all: one bar (and one count in the tab
    title) runs from the first step of the first to the last step of the last."""

    def __init__(self, progress: Any, done_before: int, total: int) -> None:
        self.progress, self.done_before, self.total = progress, done_before, total

    def __call__(self, value: tuple[int, int] | None, desc: str | None = None) -> None:
        # None: a phase without steps (GLM-Image planning), shown as it is.
        self.progress(None if value is None else (self.done_before + value[0], self.total), desc=desc)


def fresh_seeds(count: int) -> list[int]:
    """``count`` different random seeds."""
    seeds: list[int] = []
    while len(seeds) < count:
        seed = secrets.randbelow(limits.MAX_SEED + 1)
        if seed not in seeds:
            seeds.append(seed)
    return seeds


async def variations(
    ctx: Context,
    prompt: str,
    negative_prompt: str,
    style: str,
    width: int,
    height: int,
    num_images: int,
    seed: int,
    randomize_seed: bool,
    num_inference_steps: int,
    guidance_scale: float,
    session: Session,
    request: gr.Request,
    progress: gr.Progress = PROGRESS,
) -> dict[Any, Any]:
    """New pictures of the current settings with fresh seeds, as many as Images says, each seed under its image.

    Each is a one-image run of :func:`generate` (the /generate path: checks, stop, history entry), so each seed
    alone, with one image, redraws its picture; a batch would tie every image to its place in the batch."""
    lang, page = language(request), ctx.page
    values = (prompt, negative_prompt, style, width, height, num_images, seed, randomize_seed)
    raw = dict(zip(API_FIELDS, (*values, num_inference_steps, guidance_scale), strict=True))
    try:
        checked = ctx.service.validated(raw)
    except InputError as exc:
        raise as_gradio_error(ctx, exc, lang) from None
    seeds, steps = fresh_seeds(checked.num_images), checked.num_inference_steps
    shown: list[tuple[str, str]] = []
    made: list[dict[str, Any]] = []
    for index, variation_seed in enumerate(seeds):
        if index:  # the next one waited in no queue: its queue time starts now
            adapter.mark_request(request, ENQUEUED_AT, time.monotonic())
        updates = await generate(
            ctx,
            prompt,
            negative_prompt,
            style,
            width,
            height,
            1,
            variation_seed,
            False,
            num_inference_steps,
            guidance_scale,
            session,
            request,
            progress=OverallProgress(progress, index * steps, len(seeds) * steps),
        )
        if page.gallery not in updates:  # stopped; generate has said so
            break
        made.append(updates[page.details])
        caption = ctx.translator.t("caption.seed", lang, seed=variation_seed)
        shown += [(file, caption) for file in updates[page.gallery]]
    if not made:
        return {page.session: session}
    if len(made) < len(seeds):
        gr.Info(ctx.translator.t("info.variations_stopped", lang, done=len(made), total=len(seeds)))
    return {page.gallery: shown, page.seed_used: None, page.details: {"variations": made}, page.session: session}


def after_variations(ctx: Context, session: Session, details: dict | None, request: gr.Request) -> dict[Any, Any]:
    """The line under the result (each seed, the total time), and the history and log with the new entries."""
    updates = history_and_log(ctx, session, language(request))
    made = (details or {}).get("variations")
    if made:
        updates[ctx.page.timings] = ctx.translator.t(
            "timings.variations",
            language(request),
            count=len(made),
            seeds=", ".join(str(one["seed"]) for one in made),
            total_s=round(sum(one["timings"]["total_s"] for one in made), 2),
        )
    return updates


# ---- history, session, privacy ------------------------------------------------------------------------------------


def restore(ctx: Context, session: Session, evt: gr.SelectData, request: gr.Request) -> Any:
    """A click on a history image: its settings back into the controls, its images and seed into the result."""
    if evt.index is None or not 0 <= evt.index < len(session.history):
        return gr.skip()
    entry, page = session.history[evt.index], ctx.page
    p = entry.request
    restored = dict(zip(page.request_inputs, (p[name] for name in API_FIELDS), strict=True))
    if p.get("reference_images"):  # an edit: its words go back where they were typed, the pictures are gone
        restored[page.edit_prompt] = restored.pop(page.prompt)
    if can_edit(ctx):
        restored[page.before_after] = gr.update(value=None, visible=False)
    return {
        **restored,
        page.seed: entry.seed,
        page.randomize_seed: False,
        page.size_preset: preset_label(ctx.presets, p["width"], p["height"]),
        page.gallery: entry.files,
        page.seed_used: entry.seed,
        # The seed and timings shown under the image are the restored entry's, not the last generation's.
        page.timings: ctx.translator.t("timings.line", language(request), seed=entry.seed, **entry.timings),
    }


def clear_history(ctx: Context, session: Session, request: gr.Request) -> dict[Any, Any]:
    with session.lock:  # never at the same time as a finishing job saving into the history
        count = session.clear_history()
        session.record("history_cleared", entries=count)
        updates = {ctx.page.session: session, **history_and_log(ctx, session, language(request))}
    gr.Info(ctx.translator.t("info.history_cleared", language(request)))
    return updates


def new_session(ctx: Context, session: Session, request: gr.Request) -> dict[Any, Any]:
    """Everything of the old session deleted, every control back to its default."""
    session.dispose()
    fresh = Session(ctx.files_root)
    fresh.record("new_session")
    lang, page = language(request), ctx.page
    gr.Info(ctx.translator.t("info.new_session", lang))
    family = ctx.service.family
    width, height = family.default_size
    defaults = {
        page.prompt: "",
        page.negative_prompt: "",
        page.style: NO_STYLE,
        page.width: width,
        page.height: height,
        page.num_images: limits.DEFAULT_NUM_IMAGES,
        page.seed: 0,
        page.randomize_seed: True,
        page.steps: family.default_steps,
        page.guidance: family.default_guidance,
        page.size_preset: default_preset(ctx.presets, family),
        # The Edit box's pictures went with the old session's folder.
        page.edit_pictures: None,
        page.edit_files: None,
        page.edit_prompt: "",
        page.before_after: gr.update(value=None, visible=False),
        page.gallery: [],
        page.seed_used: None,
        page.details: None,
        page.timings: ctx.translator.t("timings.empty", lang),
        page.keep_history: True,
        page.embed_metadata: True,
        page.final_prompt: "",
        page.final_negative: "",
        page.download_all_file: None,
        page.download_all_ready: "",
    }
    return {page.session: fresh, **defaults, **history_and_log(ctx, fresh, lang)}


def set_keep_history(ctx: Context, session: Session, keep: bool, request: gr.Request) -> dict[Any, Any]:
    """Off: the history and the prompt text of earlier log lines go now, and later ones are not kept."""
    with session.lock:  # never at the same time as a finishing job saving into the history
        session.keep_history = bool(keep)
        session.record("setting_changed", keep_history=session.keep_history)
        if not keep:
            session.forget_prompts()
        cleared = not keep and bool(session.history)
        if cleared:
            session.clear_history()
        updates = {ctx.page.session: session, **history_and_log(ctx, session, language(request))}
    if cleared:
        gr.Info(ctx.translator.t("info.history_off", language(request)))
    return updates


def set_embed_metadata(
    ctx: Context, session: Session, embed: bool, request: gr.Request | None = None
) -> dict[Any, Any]:
    lang = language(request) if request is not None else "en"
    with session.lock:
        session.embed_metadata = bool(embed)
        session.record("setting_changed", embed_metadata=session.embed_metadata)
        return {ctx.page.session: session, **history_and_log(ctx, session, lang)}


# ---- download all ---------------------------------------------------------------------------------------------------


def zip_members(session: Session, shown: Any) -> list[tuple[str, Path]]:
    """The files "Download all" packs, with their names in the zip: the result on screen (when it is not already
    in the history) and every history entry, oldest first; only this session's own files."""
    folder = session.folder.resolve()
    members: list[tuple[str, Path]] = []
    seen: set[Path] = set()
    for entry in reversed(session.history):
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(entry.created))
        for number, name in enumerate(entry.files, start=1):
            path = Path(name).resolve()
            suffix = f"-{number}" if len(entry.files) > 1 else ""
            members.append((f"{stamp}-seed{entry.seed}{suffix}.png", path))
            seen.add(path)
    on_screen = [Path(item[0] if isinstance(item, (list, tuple)) else item).resolve() for item in shown or []]
    extra = [path for path in on_screen if path not in seen and path.parent == folder]
    members += [(f"result-{number}.png", path) for number, path in enumerate(extra, start=1)]
    return [(name, path) for name, path in members if path.is_file()]


def mirror_pictures(pictures: Any) -> Any:
    """The Edit box's gallery items (raw: ``{"image": file record, "caption": ...}``) as /edit's list of file
    records, unchanged; None when the box is empty."""
    files = [item["image"] for item in pictures or [] if isinstance(item, dict) and item.get("image")]
    return files or None


def download_all(ctx: Context, session: Session, shown: Any, request: gr.Request) -> dict[Any, Any]:
    """The result on screen and the whole history as one zip, built now in the session's folder (deleted with
    the session, like every file there; an earlier zip goes when a new one is made). PNGs as generated, with
    their parameters when embedding was on."""
    page = ctx.page
    members = zip_members(session, shown)
    if not members:
        gr.Info(ctx.translator.t("info.nothing_to_download", language(request)))
        return {page.download_all_file: None}
    for old in session.folder.glob("*.zip"):
        old.unlink(missing_ok=True)
    path = session.folder / f"glm-image-{time.strftime('%Y%m%d-%H%M%S')}.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:  # PNGs are compressed already
        for name, file in members:
            archive.write(file, arcname=name)
    session.record("downloaded_all", images=len(members))
    # The page script sees the ticket change and presses the (offscreen) download button, which now holds the zip.
    return {
        page.download_all_file: str(path),
        page.download_all_ready: uuid.uuid4().hex,
        page.session: session,
        **history_and_log(ctx, session, language(request)),
    }


# ---- reading parameters from a picture ---------------------------------------------------------------------------


def read_parameters(ctx: Context, image: Any, request: gr.Request) -> dict[Any, Any]:
    """The parameters stored in a PNG (the /read_parameters API; its one parameter is ``image``).

    The file is deleted as soon as it is read, and Gradio's notes of it (its path, which names a hash of its
    content, and its original name) are dropped: nothing of it is kept. Only a file uploaded through Gradio's
    upload route is read and deleted, never another path a client names (such as another visitor's image)."""
    lang, page = language(request), ctx.page
    path = image.get("path") if isinstance(image, dict) else None
    received = isinstance(path, str) and adapter.is_gradio_upload(ctx.demo, path)
    try:
        if not received:
            raise InputError("error.params_no_file")
        found = parameters.read_parameters(path, ctx.styles)
    except FileNotFoundError:
        raise read_error(ctx, InputError("error.params_no_file"), lang) from None
    except InputError as exc:
        raise read_error(ctx, exc, lang) from None
    finally:
        if received:
            delete_upload(path)
            adapter.forget_gradio_upload(ctx.demo, page.read_file, path)
        adapter.forget_input_value(ctx.demo, request.session_hash, page.read_file)
    return {page.read_result: found.to_dict()}


def delete_upload(path: str) -> None:
    """Delete an uploaded file and the folder Gradio made for it (named after a hash of its content)."""
    file = Path(path)
    file.unlink(missing_ok=True)
    if file.parent.resolve().parent == adapter.upload_folder().resolve():
        try:
            file.parent.rmdir()
        except OSError:  # not empty: another upload with the same content is still there
            pass


def read_error(ctx: Context, error: AppError, lang: str) -> gr.Error:
    return gr.Error(
        message(ctx.translator, error, lang), title=ctx.translator.t("read.error_title", lang), print_exception=False
    )


def show_read_parameters(ctx: Context, found: dict[str, Any] | None, request: gr.Request) -> dict[Any, Any]:
    """What was read, in words, and the drop box empty again for the next picture."""
    page = ctx.page
    summary = parameters_summary(ctx, found, language(request)) if found else ctx.translator.t("read.empty")
    return {page.read_file: None, page.read_summary: summary, page.use_read: gr.Button(interactive=bool(found))}


def forget_read_parameters(ctx: Context, request: gr.Request) -> dict[Any, Any]:
    """After a refused picture: nothing read, nothing to use, the drop box empty."""
    page = ctx.page
    return {
        page.read_file: None,
        page.read_result: None,
        page.read_summary: ctx.translator.t("read.empty", language(request)),
        page.use_read: gr.Button(interactive=False),
    }


def parameters_summary(ctx: Context, found: dict[str, Any], lang: str) -> str:
    t = ctx.translator.t
    unknown = t("read.not_recorded", lang)

    def shown(value: Any) -> str:
        if value is None:
            return unknown
        return markdown_text(str(value)) if value != "" else "—"

    lines = [
        f"**{t('field.prompt', lang)}**: {shown(found.get('prompt'))}",
        f"**{t('field.negative_prompt', lang)}**: {shown(found.get('negative_prompt'))}",
    ]
    style = ctx.styles.get(found["style"]) if found.get("style") else None
    if style is not None:
        lines.append(f"**{t('field.style', lang)}**: {markdown_text(style.name[lang])}")
    size = f"{found['width']}×{found['height']}" if found.get("width") and found.get("height") else None
    lines.append(
        " · ".join(
            [
                f"**{t('field.seed', lang)}** {shown(found.get('seed'))}",
                f"**{t('read.size', lang)}** {shown(size)}",
                f"**{t('field.num_inference_steps', lang)}** {shown(found.get('num_inference_steps'))}",
                f"**{t('field.guidance_scale', lang)}** {shown(found.get('guidance_scale'))}",
                f"**{t('read.model', lang)}** {shown(found.get('model'))}",
            ]
        )
    )
    text = "  \n".join(lines)
    model, current = found.get("model"), ctx.loader.model_name
    if model and model != current:
        text += "\n\n" + t("read.other_model", lang, model=markdown_text(model), current=markdown_text(current))
    return text


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>])")


def markdown_text(text: str) -> str:
    """Text from a picture shown as it is in Markdown: no markup, no HTML, line breaks kept."""
    escaped = _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))
    return escaped.replace("\r\n", "\n").replace("\n", "  \n")


def use_read_parameters(ctx: Context, found: dict[str, Any] | None, request: gr.Request) -> Any:
    """The picture's settings into the controls: one image with its seed, so Generate draws it again. A value
    this server does not allow is put in as it is, with a warning naming the rule (Generate will refuse it)."""
    if not found:
        return gr.skip()
    page, lang = ctx.page, language(request)
    controls = {
        page.prompt: "prompt",
        page.negative_prompt: "negative_prompt",
        page.width: "width",
        page.height: "height",
        page.seed: "seed",
        page.steps: "num_inference_steps",
        page.guidance: "guidance_scale",
    }
    family = ctx.service.family
    # A model without a negative prompt refuses one: the picture's is left out, and the visitor is told so.
    left_out = not family.negative_prompt and bool(found.get("negative_prompt"))
    if not family.negative_prompt:
        del controls[page.negative_prompt]
    updates: dict[Any, Any] = {
        control: found[name] for control, name in controls.items() if found.get(name) is not None
    }
    style = found.get("style")
    updates[page.style] = style if isinstance(style, str) and style in ctx.styles else NO_STYLE
    updates[page.num_images] = 1
    if found.get("seed") is not None:
        updates[page.randomize_seed] = False
    if found.get("width") and found.get("height"):
        updates[page.size_preset] = preset_label(ctx.presets, found["width"], found["height"])
    # Checked as Generate will check them; a value the picture does not give is the control's default.
    field_of = dict(zip(page.request_inputs, API_FIELDS, strict=True))
    raw = {name: control.value for control, name in field_of.items()}
    raw |= {field_of[control]: value for control, value in updates.items() if control in field_of}
    if left_out:
        gr.Warning(ctx.translator.t("read.negative_left_out", lang, model=family.display_name))
    try:
        ctx.service.validated(raw)
    except InputError as exc:
        gr.Warning(message(ctx.translator, exc, lang))
    else:
        gr.Info(ctx.translator.t("info.parameters_used", lang))
    return updates


# ---- sizes and preview --------------------------------------------------------------------------------------------


def pick_preset(ctx: Context, label: str) -> Any:
    preset = next((p for p in ctx.presets if p.label == label), None)
    if preset is None:
        return gr.skip()
    return {ctx.page.width: preset.width, ctx.page.height: preset.height}


def capped(changed: int, other: int, rules: SizeRules = COGVIEW4.sizes) -> int:
    """The other side, lowered if needed so the image stays within the pixel limit of the model's ``rules``."""
    if (
        size_problem(changed, other, rules) == "error.too_many_pixels"
        and size_problem(changed, rules.min_side, rules) is None
    ):
        return largest_legal_side(changed, rules)
    return other


# The other side is sent back only when lowered: sending it unchanged would overwrite what the visitor typed there
# while this event was on its way (typing 512 into both boxes gave a 512x1024 image).
def width_changed(ctx: Context, width: Any, height: Any) -> dict[Any, Any]:
    page = ctx.page
    if not all(isinstance(v, (int, float)) for v in (width, height)):
        return {page.size_preset: CUSTOM_SIZE}
    new_height = capped(int(width), int(height), ctx.service.family.sizes)
    updates = {page.size_preset: preset_label(ctx.presets, width, new_height)}
    if new_height != height:
        updates[page.height] = new_height
    return updates


def height_changed(ctx: Context, width: Any, height: Any) -> dict[Any, Any]:
    page = ctx.page
    if not all(isinstance(v, (int, float)) for v in (width, height)):
        return {page.size_preset: CUSTOM_SIZE}
    new_width = capped(int(height), int(width), ctx.service.family.sizes)
    updates = {page.size_preset: preset_label(ctx.presets, new_width, height)}
    if new_width != width:
        updates[page.width] = new_width
    return updates


def preview(ctx: Context, prompt: Any, negative_prompt: Any, style: Any) -> Any:
    """What the model will receive: the prompts with the style applied."""
    if not isinstance(style, str) or style not in ctx.styles:
        return gr.skip()
    takes_negative = ctx.service.family.negative_prompt
    styled = ctx.styles.apply(style, str(prompt or ""), str(negative_prompt or ""), takes_negative=takes_negative)
    return {ctx.page.final_prompt: styled.prompt, ctx.page.final_negative: styled.negative_prompt}


# ---- prompt enhancement -------------------------------------------------------------------------------------------


def enhance_prompt(ctx: Context, text: str, request: gr.Request) -> Any:
    """Rewrite the prompt with the configured chat model; on failure a warning, and the prompt stays."""
    lang = language(request)
    try:
        better = ctx.enhancer.enhance(text)  # type: ignore[union-attr]
    except AppError as exc:
        gr.Warning(message(ctx.translator, exc, lang))
        return gr.skip()
    gr.Info(ctx.translator.t("enhancer.done", lang))
    return {ctx.page.prompt: better}


def files_folder() -> Path:
    """A folder of this server's own for its images, inside Gradio's temporary folder so they are served without
    a copy (one per server, so two servers in one process never delete each other's files)."""
    return adapter.upload_folder() / "glmimage" / uuid.uuid4().hex[:12]
