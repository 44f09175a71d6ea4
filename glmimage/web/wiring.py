"""The page's events: which component triggers which handler, with which inputs and outputs, validators, queue
groups and concurrency; and the end of a session (tab closed, idle too long).

:func:`build_demo` builds the ``gr.Blocks``: layout.py lays out the components, handlers.py says what each event
does, and this module connects the two. A new event goes in :func:`wire` (or a function of its own called from
there), with its handler in handlers.py.
"""

from __future__ import annotations

import asyncio
import datetime
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from ..config import Settings
from ..engine import Engine
from ..enhancer import PromptEnhancer
from ..errors import InputError, Refused
from ..i18n import Translator
from ..maintenance import Drain, MaintenanceFile
from ..metrics import Metrics
from ..models.families import COGVIEW4, Family
from ..models.loading import PipelineLoader
from ..service import API_FIELDS, EDIT_FIELDS, GenerationService
from ..sessions import Session, dispose_session
from ..sizes import SizePreset
from ..styles import StyleBook
from . import gradio_adapter as adapter
from . import handlers
from .handlers import Context
from .layout import TITLE, build_page

# Options of the page's cheap events (no GPU, no outside call): hidden from the API, never waiting for a worker
# slot, no progress shown.
QUIET: dict[str, Any] = dict(api_visibility="private", concurrency_limit=None, show_progress="hidden")
# Cheap events answered at once, off the queue, so they never take a place from a generation (a toast such as
# gr.Info needs the queue: events that show one stay QUIET).
INSTANT: dict[str, Any] = dict(QUIET, queue=False)
# The prompt enhancer's calls to the outside service running at once, over all visitors.
ENHANCER_CONCURRENCY = 4
# Pictures read at once (/read_parameters: a PNG's text chunks, no pixels), and zips built at once (disk work).
READ_CONCURRENCY = 4
ZIP_CONCURRENCY = 2
# Pictures taken into the Edit box at once (each decoded, up to 50 megapixels).
PICTURES_CONCURRENCY = 2


@dataclass
class AppParts:
    """What ``build_demo`` needs beyond the settings; tests pass fakes for the engine."""

    settings: Settings
    loader: PipelineLoader
    engine: Engine
    styles: StyleBook
    translator: Translator
    presets: list[SizePreset]
    examples: list[dict[str, Any]]
    files_root: Path
    enhancer: PromptEnhancer | None = None
    # The maintenance file, a shutdown under way, the metrics the service reports to (operators' parts).
    maintenance: MaintenanceFile | None = None
    drain: Drain | None = None
    metrics: Metrics | None = None
    # The model's row of the capability table (glmimage.models.families): what the page and the API offer.
    family: Family = COGVIEW4


def build_demo(parts: AppParts, i18n: gr.I18n) -> Context:
    """Lay out the page and wire its events; the returned context holds the demo. ``i18n`` must also be passed
    to ``launch``."""
    settings = parts.settings
    service = GenerationService(
        settings,
        parts.engine,
        parts.styles,
        lambda: parts.loader.model_name,
        observer=parts.metrics,
        maintenance=parts.maintenance,
        drain=parts.drain,
        family=parts.family,
    )
    with gr.Blocks(
        title=TITLE,
        analytics_enabled=False,
        delete_cache=(max(60, int(settings.file_ttl // 4)), int(settings.file_ttl)),
    ) as demo:
        page = build_page(
            i18n,
            parts.styles,
            parts.presets,
            parts.examples,
            files_root=str(parts.files_root),
            session_ttl=settings.session_ttl,
            with_enhancer=parts.enhancer is not None,
            with_maintenance=parts.maintenance is not None,
            family=parts.family,
        )
        ctx = Context(
            page=page,
            demo=demo,
            settings=settings,
            service=service,
            translator=parts.translator,
            styles=parts.styles,
            loader=parts.loader,
            presets=parts.presets,
            files_root=str(parts.files_root),
            enhancer=parts.enhancer,
            maintenance=parts.maintenance,
        )
        wire(ctx)
    return ctx


def bind(fn: Callable[..., Any], ctx: Context) -> Callable[..., Any]:
    """``fn`` with its context bound: Gradio sees the other parameters (and their ``gr.Request`` annotations),
    and names the event after the function."""
    return types.MethodType(fn, ctx)


def wire(ctx: Context) -> None:
    page, demo = ctx.page, ctx.demo
    status_outputs = [page.model_status, page.status_timer, page.privacy_notice]
    demo.load(bind(handlers.show_status, ctx), None, status_outputs, **INSTANT)
    page.status_timer.tick(bind(handlers.show_status, ctx), None, status_outputs, **INSTANT)
    # Answered at once, never taking a place in the generation queue.
    notes = [page.maintenance_banner, page.contact_line]
    demo.load(bind(handlers.show_operator_notes, ctx), None, notes, **INSTANT)
    page.maintenance_timer.tick(bind(handlers.show_operator_notes, ctx), None, notes, **INSTANT)
    _wire_generation(ctx)
    _wire_variations(ctx)
    _wire_edit(ctx)
    _wire_history_and_privacy(ctx)
    _wire_download_all(ctx)
    _wire_sizes_and_preview(ctx)
    _wire_read_parameters(ctx)
    if ctx.enhancer is not None:
        page.enhance.click(
            bind(handlers.enhance_prompt, ctx),
            [page.prompt],
            [page.prompt],
            validator=bind(check_enhancement, ctx),
            preprocess=False,  # the validator words every refusal itself, in the visitor's language
            api_visibility="private",
            concurrency_limit=ENHANCER_CONCURRENCY,
            concurrency_id="enhancer",
        )
    demo.unload(bind(on_unload, ctx))


def _wire_generation(ctx: Context) -> None:
    page = ctx.page
    after_outputs = [page.before_after] if handlers.can_edit(ctx) else []  # no "before" for a new picture
    _gpu_job(
        ctx,
        [page.prompt.submit, page.run.click],
        handlers.generate,
        handlers.after_generation,
        api_name="generate",
        after_outputs=after_outputs,
    )
    page.stop.click(handlers.request_stop, [page.session], None, **INSTANT)


def _wire_edit(ctx: Context) -> None:
    """/edit, for every model (one that cannot edit refuses each call, naming itself); the Edit tab's own events
    where the model takes pictures: the box takes each picture in as it arrives, and forgets one taken out."""
    page = ctx.page
    _gpu_job(
        ctx,
        [page.edit_prompt.submit, page.edit_run.click],
        handlers.edit,
        handlers.after_edit,
        api_name="edit",
        inputs=[*page.edit_inputs, page.session],
        validator=bind(check_edit, ctx),
        after_inputs=[page.session, page.details, page.edit_files, page.gallery],
        after_outputs=[page.before_after],
    )
    if not handlers.can_edit(ctx):
        return
    page.edit_stop.click(handlers.request_stop, [page.session], None, **INSTANT)
    page.edit_pictures.upload(
        bind(handlers.take_pictures, ctx),
        [page.edit_pictures, page.session],
        [page.edit_pictures, page.width, page.height, page.size_preset, page.session],
        api_visibility="private",
        preprocess=False,  # the paths as Gradio received them; the intake reads each file itself
        concurrency_limit=PICTURES_CONCURRENCY,
        concurrency_id="pictures",
        show_progress="minimal",
    )
    page.edit_pictures.delete(bind(handlers.drop_picture, ctx), [page.session], [page.session], **QUIET)
    # What Edit sends is always what the box shows: its pictures copied into /edit's list of files as they are
    # (raw file records both ways, so nothing is read, copied or written on the server).
    page.edit_pictures.change(
        handlers.mirror_pictures,
        [page.edit_pictures],
        [page.edit_files],
        preprocess=False,
        postprocess=False,
        **INSTANT,
    )


def _wire_variations(ctx: Context) -> None:
    """Variations: the page's own button, not part of the API. It counts once against the rate limit, as a
    /generate call with several images does, and as one job against --max-jobs-per-client."""
    page = ctx.page
    _gpu_job(
        ctx,
        [page.variations.click],
        handlers.variations,
        handlers.after_variations,
        api_name="variations",
        api_visibility="private",
    )


def _gpu_job(
    ctx: Context,
    triggers: list[Any],
    fn: Callable[..., Any],
    after: Callable[..., Any],
    *,
    inputs: list[Any] | None = None,
    validator: Callable[..., Any] | None = None,
    after_inputs: list[Any] | None = None,
    after_outputs: list[Any] | None = None,
    **options: Any,
) -> None:
    """An event that runs on the GPU: the controls in (/generate's unless ``inputs`` says otherwise), the result
    out (what /generate returns), the checks before it queues (``validator``, the generation checks by default),
    the "gpu" queue group and concurrency; then ``after`` updates the timings line, history and log (and
    ``after_outputs``)."""
    page = ctx.page
    job = gr.on(
        triggers,
        bind(fn, ctx),
        inputs=inputs or [*page.request_inputs, page.session],
        outputs=[page.gallery, page.seed_used, page.details, page.session],
        validator=validator or bind(check_generation, ctx),
        preprocess=False,
        concurrency_limit=ctx.settings.workers,  # one job per pipeline of the pool
        concurrency_id="gpu",
        show_progress_on=page.gallery,
        **options,
    )
    # Not an output of the job itself: API clients would download the whole history with every call.
    job.then(
        bind(after, ctx),
        after_inputs or [page.session, page.details],
        [page.timings, *page.history_outputs, *(after_outputs or [])],
        preprocess=False,
        **QUIET,
    )


def _wire_download_all(ctx: Context) -> None:
    page = ctx.page
    page.download_all.click(
        bind(handlers.download_all, ctx),
        [page.session, page.gallery],
        [page.download_all_file, page.download_all_ready, page.session, *page.history_outputs],
        api_visibility="private",
        concurrency_limit=ZIP_CONCURRENCY,
        concurrency_id="zip",
        show_progress="hidden",
    )


def _wire_read_parameters(ctx: Context) -> None:
    """/read_parameters: through the queue in a cheap group of its own, never waiting for (or counted as) a GPU
    job. The page then shows what was read, or forgets a refused picture."""
    page = ctx.page
    reading = page.read_file.upload(
        bind(handlers.read_parameters, ctx),
        [page.read_file],
        [page.read_result],
        api_name="read_parameters",
        preprocess=False,  # the file's path as Gradio received it; nothing is decoded before the handler
        concurrency_limit=READ_CONCURRENCY,
        concurrency_id="read_parameters",
        show_progress="minimal",
    )
    reading.success(
        bind(handlers.show_read_parameters, ctx),
        [page.read_result],
        [page.read_file, page.read_summary, page.use_read],
        **QUIET,
    )
    reading.failure(
        bind(handlers.forget_read_parameters, ctx),
        None,
        [page.read_file, page.read_result, page.read_summary, page.use_read],
        **QUIET,
    )
    page.use_read.click(
        bind(handlers.use_read_parameters, ctx),
        [page.read_result],
        [*page.request_inputs, page.size_preset],
        **QUIET,
    )


def _wire_history_and_privacy(ctx: Context) -> None:
    page = ctx.page
    session_and_history = [page.session, *page.history_outputs]
    edit_outputs = [page.edit_prompt, page.before_after] if handlers.can_edit(ctx) else []
    page.history.select(
        bind(handlers.restore, ctx),
        [page.session],
        [*page.request_inputs, page.size_preset, page.gallery, page.seed_used, page.timings, *edit_outputs],
        **INSTANT,
    )
    page.clear_history.click(bind(handlers.clear_history, ctx), [page.session], session_and_history, **QUIET)
    page.reset_session.click(
        bind(handlers.new_session, ctx),
        [page.session],
        [
            page.session,
            *page.request_inputs,
            page.size_preset,
            page.gallery,
            page.seed_used,
            page.details,
            page.timings,
            page.keep_history,
            page.embed_metadata,
            page.final_prompt,
            page.final_negative,
            page.download_all_file,
            page.download_all_ready,
            page.edit_pictures,
            page.edit_files,
            page.edit_prompt,
            page.before_after,
            *page.history_outputs,
        ],
        **QUIET,
    )
    page.keep_history.input(
        bind(handlers.set_keep_history, ctx), [page.session, page.keep_history], session_and_history, **QUIET
    )
    page.embed_metadata.input(
        bind(handlers.set_embed_metadata, ctx), [page.session, page.embed_metadata], session_and_history, **INSTANT
    )


def _wire_sizes_and_preview(ctx: Context) -> None:
    page = ctx.page
    page.size_preset.input(bind(handlers.pick_preset, ctx), [page.size_preset], [page.width, page.height], **INSTANT)
    # preprocess=False: a half-typed number arrives as it is, and the handler leaves it alone.
    sides = [page.width, page.height]
    page.width.input(
        bind(handlers.width_changed, ctx), sides, [page.height, page.size_preset], preprocess=False, **INSTANT
    )
    page.height.input(
        bind(handlers.height_changed, ctx), sides, [page.width, page.size_preset], preprocess=False, **INSTANT
    )
    gr.on(
        [page.prompt.change, page.negative_prompt.change, page.style.change],
        bind(handlers.preview, ctx),
        [page.prompt, page.negative_prompt, page.style],
        [page.final_prompt, page.final_negative],
        trigger_mode="always_last",
        preprocess=False,
        **INSTANT,
    )


# ---- validators: they run before a job may join the queue, for the page and for API clients alike ---------------


async def check_generation(
    ctx: Context,
    prompt: Any,
    negative_prompt: Any,
    style: Any,
    width: Any,
    height: Any,
    num_images: Any,
    seed: Any,
    randomize_seed: Any,
    num_inference_steps: Any,
    guidance_scale: Any,
    session: Session,
    request: gr.Request,
) -> list[Any]:
    """Bad input and floods never reach the GPU: input rules, the per-visitor job cap and the rate limit.

    ``async`` (it never waits): it then runs on the event loop between Gradio's --max-queue check and the job's
    append, so simultaneous requests cannot all pass both caps at once (on worker threads, 30 at once put 28 jobs
    into a queue of 4)."""
    values = (prompt, negative_prompt, style, width, height, num_images, seed, randomize_seed)
    raw = dict(zip(API_FIELDS, (*values, num_inference_steps, guidance_scale), strict=True))
    client = handlers.client_address(request)
    try:
        jobs = handlers.jobs_of_client(ctx.demo, client)
        lang = handlers.language(request)  # a maintenance notice comes in the visitor's language
        ctx.service.admit(raw, client, request.session_hash or client, jobs, session, lang=lang)
    except (InputError, Refused) as exc:
        # One result per input: the message shows on the field at fault (the prompt for limits).
        text = handlers.message(ctx.translator, exc, handlers.language(request))
        return verdicts(API_FIELDS, handlers.field_at_fault(exc), text)
    adapter.mark_request(request, handlers.ENQUEUED_AT, time.monotonic())
    return verdicts(API_FIELDS)


async def check_edit(
    ctx: Context,
    prompt: Any,
    images: Any,
    width: Any,
    height: Any,
    num_images: Any,
    seed: Any,
    randomize_seed: Any,
    num_inference_steps: Any,
    guidance_scale: Any,
    session: Session,
    request: gr.Request,
) -> list[Any]:
    """/edit's checks before a job may queue, the same as Generate's (input rules, the per-visitor job cap, the
    rate limit, maintenance and shutdown) and, for the pictures, what needs no decoding: the model takes pictures,
    their number, each one uploaded (or in this session's Edit box) and its size, format, pixel count and shape
    from its header. A refused edit keeps nothing of its uploads. ``async`` for the reason Generate's is."""
    values = (prompt, images, width, height, num_images, seed, randomize_seed, num_inference_steps, guidance_scale)
    raw = dict(zip(EDIT_FIELDS, values, strict=True))
    client = handlers.client_address(request)
    lang = handlers.language(request)
    try:
        try:
            ctx.service.check_open(lang)  # a server shutting down says so before anything about pictures
            # A model that cannot edit refuses here, naming itself; then the pictures, as far as headers go.
            sources = handlers.edit_sources(ctx, images, session, ctx.settings.max_upload_bytes)
        except (InputError, Refused) as exc:
            ctx.service.record_refusal(exc, raw, session, handlers.picture_items(images))
            raise
        jobs = handlers.jobs_of_client(ctx.demo, client)
        pictures = [path for _kind, path in sources]
        ctx.service.admit(raw, client, request.session_hash or client, jobs, session, lang=lang, images=pictures)
    except (InputError, Refused) as exc:
        handlers.discard_uploads(ctx, images)
        return verdicts(EDIT_FIELDS, edit_field_at_fault(exc), handlers.message(ctx.translator, exc, lang))
    adapter.mark_request(request, handlers.ENQUEUED_AT, time.monotonic())
    return verdicts(EDIT_FIELDS)


def verdicts(fields: Sequence[str], field: str | None = None, text: str = "") -> list[Any]:
    """A validator's answer: one result per API parameter, ``text`` shown on ``field`` (none: all pass), and none
    for the session, which is no parameter of the API."""
    return [gr.validate(name != field, text if name == field else "") for name in fields] + [None]


def edit_field_at_fault(error: InputError | Refused) -> str:
    """The /edit parameter a refusal is shown on: the pictures for anything about them, else as for Generate."""
    about_pictures = error.key.startswith("error.upload") or error.key in (
        "error.edit_unsupported",
        "error.picture_missing",
        "error.aspect",
        "error.no_images",
        "error.too_many_images",
    )
    return "images" if about_pictures else handlers.field_at_fault(error)


async def check_enhancement(ctx: Context, text: Any, request: gr.Request) -> dict[str, Any]:
    """What the enhancer may send out is a prompt within the prompt's rules, and each visitor has an allowance
    of calls; checked before the call queues, however it was sent (the page, its event index, its API name).
    One input, so one result (a list would be read as the value of that one input, and pass)."""
    client = handlers.client_address(request)
    try:
        ctx.service.admit_enhancement(text, client, request.session_hash or client)
    except (InputError, Refused) as exc:
        return gr.validate(False, handlers.message(ctx.translator, exc, handlers.language(request)))
    return gr.validate(True, "")


# ---- the end of a session -------------------------------------------------------------------------------------------


async def on_unload(ctx: Context, request: gr.Request) -> None:
    """The tab closed: drop the session's history and files now, not an hour later. Async, so it runs on the
    event loop, never at the same time as Gradio's own expiry of states."""
    forget_session(ctx.demo, request.session_hash)


def forget_session(demo: gr.Blocks, session_hash: str | None) -> None:
    """Drop everything held for one session: our Session (history, log, files) and Gradio's own record of it.

    Gradio keeps every session's last inputs and outputs (prompt, details, session log) in its state holder until
    ``--max-sessions`` newer sessions push it out, even after the ``gr.State`` expired; and a state never set as
    an output (a visitor whose only request was refused) never expires at all."""
    if not session_hash:
        return
    for value in adapter.drop_session(demo, session_hash):
        dispose_session(value)


def forget_idle_sessions(demo: gr.Blocks, idle_s: float) -> int:
    """Forget every session with nothing queued or running and no event or state update for ``idle_s`` seconds;
    returns how many."""
    busy = {adapter.event_session_hash(event) for event in adapter.waiting_and_running_events(demo)}
    now = datetime.datetime.now()
    idle = [
        session_hash
        for session_hash, last in adapter.last_activity(demo).items()
        if session_hash not in busy and (now - last).total_seconds() > idle_s
    ]
    for session_hash in idle:
        forget_session(demo, session_hash)
    return len(idle)


async def forget_idle_sessions_forever(demo: gr.Blocks, idle_s: float) -> None:
    """Run by the server's lifespan, on the event loop where Gradio expires its own states."""
    while True:
        await asyncio.sleep(max(1.0, min(60.0, idle_s / 4)))
        forget_idle_sessions(demo, idle_s)
