"""The page: lays out the components and wires their events to the core (service, engine, sessions).

Everything a visitor keeps lives in one ``gr.State`` holding a :class:`~glmimage.sessions.Session`. Messages
made here are translated on the server from the request's Accept-Language, since Gradio shows ``gr.Error`` text
as it is.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from .. import limits
from ..config import Settings
from ..engine import Engine
from ..enhancer import EnhancerError, PromptEnhancer
from ..errors import EngineError, InputError, Refused
from ..i18n import Translator, language_of
from ..models.loading import ModelState, PipelineLoader
from ..ratelimit import client_ip
from ..service import API_FIELDS, GenerationService
from ..sessions import Session, dispose_session
from ..sizes import SizePreset, largest_legal_side, size_problem
from ..styles import NO_STYLE, StyleBook

log = logging.getLogger("glmimage.ui")
# Gradio finds the progress tracker by this default value (its documented pattern).
PROGRESS = gr.Progress()
# The Size dropdown's value when width and height match no preset (so the box never shows empty).
CUSTOM_SIZE = "custom"

CSS = """
#generate-row button { min-height: 3rem; }
#timings { min-height: 2.5rem; }
.glm-note p { font-size: var(--text-sm); opacity: 0.85; }
/* Whole images in the result: Gradio's square cells are wider than the box is tall, which cut images off. */
#result .grid-container { height: 100%; box-sizing: border-box; }
#result .thumbnail-item { aspect-ratio: auto; }
"""


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


def files_folder() -> Path:
    """A folder of this server's own for its images, inside Gradio's temporary folder so they are served
    without a copy (one per server, so two servers in one process never delete each other's files)."""
    return Path(gr.utils.get_upload_folder()) / "glmimage" / uuid.uuid4().hex[:12]


def _lang(request: gr.Request | None) -> str:
    headers = getattr(request, "headers", None) or {}
    return language_of(headers.get("accept-language"))


class Texts:
    """Server-side translation of message keys, with field names translated too."""

    def __init__(self, translator: Translator) -> None:
        self.translator = translator

    def __call__(self, key: str, lang: str, **params: object) -> str:
        if "field" in params:
            params["field"] = self.translator.t(f"field.{params['field']}", lang)
        return self.translator.t(key, lang, **params)


def _client_of(request: Any, settings: Settings) -> str:
    client = getattr(request, "client", None)
    return client_ip(
        getattr(client, "host", None), dict(getattr(request, "headers", {}) or {}), settings.trusted_proxy_list
    )


def _jobs_of_client(demo: gr.Blocks, client: str, settings: Settings) -> int:
    """Jobs of this client queued or running, read from Gradio's own queue so the count can never drift."""
    queue = getattr(demo, "_queue", None)
    if queue is None:
        return 0
    events = [e for q in queue.event_queue_per_concurrency_id.values() for e in q.queue]
    events += [e for job in queue.active_jobs if job for e in job]
    return sum(
        1
        for e in events
        if getattr(e.fn, "api_name", None) == "generate" and _client_of(e.request, settings) == client
    )


def _client_gone(demo: gr.Blocks, session_hash: str | None) -> bool:
    """True once the visitor's page closed or its event stream dropped, so their job can stop early."""
    if not session_hash:
        return False
    holder = getattr(demo, "state_holder", None)
    session_state = getattr(holder, "session_data", {}).get(session_hash) if holder else None
    if session_state is not None and session_state.is_closed:
        return True
    queue = getattr(demo, "_queue", None)
    for job in getattr(queue, "active_jobs", []) or []:
        for event in job or []:
            if event.session_hash == session_hash and not event.alive:
                return True
    return False


def forget_session(demo: gr.Blocks, session_hash: str | None) -> None:
    """Drop everything held for one session: our Session (history, log, files) and Gradio's own record of it.

    Gradio keeps every session's last inputs and outputs (prompt, details, session log) in its state holder until
    ``--max-sessions`` newer sessions push it out, even after the ``gr.State`` expired; and a state never set as
    an output (a visitor whose only request was refused) never expires at all."""
    holder = getattr(demo, "state_holder", None)
    if holder is None or not session_hash:
        return
    session_state = holder.session_data.pop(session_hash, None)
    holder.time_last_used.pop(session_hash, None)
    for value in list(getattr(session_state, "state_data", {}).values()):
        dispose_session(value)


def forget_idle_sessions(demo: gr.Blocks, idle_s: float) -> int:
    """Forget every session with nothing queued or running and no event or state update for ``idle_s`` seconds;
    returns how many."""
    holder = getattr(demo, "state_holder", None)
    queue = getattr(demo, "_queue", None)
    if holder is None or queue is None:
        return 0
    events = [e for q in queue.event_queue_per_concurrency_id.values() for e in q.queue]
    busy = {e.session_hash for e in events + [e for job in queue.active_jobs if job for e in job]}
    now = datetime.datetime.now()
    idle = []
    for session_hash, used in list(holder.time_last_used.items()):
        # Gradio notes an event when it starts; a generation sets the state when it ends.
        set_at = [at for _ttl, at in getattr(holder.session_data.get(session_hash), "_state_ttl", {}).values()]
        if session_hash not in busy and (now - max([used, *set_at])).total_seconds() > idle_s:
            idle.append(session_hash)
    for session_hash in idle:
        forget_session(demo, session_hash)
    return len(idle)


async def forget_idle_sessions_forever(demo: gr.Blocks, idle_s: float) -> None:
    """Run by the server's lifespan, on the event loop where Gradio expires its own states."""
    while True:
        await asyncio.sleep(max(1.0, min(60.0, idle_s / 4)))
        forget_idle_sessions(demo, idle_s)


def make_i18n(translator: Translator, styles: StyleBook) -> gr.I18n:
    """The page's strings for ``gr.I18n``, plus the style names, which live in the styles file."""
    tables = translator.gradio_tables()
    for locale, table in tables.items():
        lang = "zh" if locale.startswith("zh") else "en"
        names = {f"style.{sid}": styles.get(sid).name[lang] for sid in styles.ids if sid != NO_STYLE}
        # The browser shows gr.I18n strings as they are: fill the one placeholder a page string has here.
        note = table["history.note"].format(max=limits.MAX_HISTORY_ENTRIES)
        tables[locale] = {**table, **names, "history.note": note}
    return gr.I18n(**tables)


def build_demo(parts: AppParts, i18n: gr.I18n) -> gr.Blocks:
    """Lay out the page and wire its events. ``i18n`` must also be passed to ``launch``."""
    settings, translator, styles = parts.settings, parts.translator, parts.styles
    texts = Texts(translator)
    service = GenerationService(settings, parts.engine, styles, lambda: parts.loader.model_name)
    preset_by_label = {p.label: p for p in parts.presets}
    default_preset = next(
        p.label for p in parts.presets if (p.width, p.height) == (limits.DEFAULT_WIDTH, limits.DEFAULT_HEIGHT)
    )
    files_root = str(parts.files_root)

    with gr.Blocks(
        title="GLM Image",
        analytics_enabled=False,
        delete_cache=(max(60, int(settings.file_ttl // 4)), int(settings.file_ttl)),
    ) as demo:
        # A plain default (not a callable, which Gradio would expose as a public load endpoint); Gradio gives
        # every visit its own deep copy.
        session_state = gr.State(
            value=Session(files_root), time_to_live=settings.session_ttl, delete_callback=dispose_session
        )
        gr.Markdown(i18n("app.header"), elem_id="header")
        model_status = gr.Markdown(elem_id="model-status")
        status_timer = gr.Timer(1.0)

        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=320):
                prompt = gr.Textbox(
                    label=i18n("label.prompt"),
                    placeholder=i18n("placeholder.prompt"),
                    lines=3,
                    max_lines=10,
                    elem_id="prompt",
                )
                with gr.Row(elem_id="generate-row"):
                    run = gr.Button(i18n("button.generate"), variant="primary", scale=3, elem_id="generate")
                    stop = gr.Button(i18n("button.stop"), variant="stop", scale=1, elem_id="stop")
                enhance = gr.Button(
                    i18n("button.enhance"), size="sm", visible=parts.enhancer is not None, elem_id="enhance"
                )
                style = gr.Dropdown(
                    choices=[(i18n(f"style.{sid}"), sid) for sid in styles.ids],
                    value=NO_STYLE,
                    label=i18n("label.style"),
                    elem_id="style",
                )
                size_preset = gr.Dropdown(
                    choices=[*preset_by_label, (i18n("size.custom"), CUSTOM_SIZE)],
                    value=default_preset,
                    label=i18n("label.size"),
                    elem_id="size-preset",
                )
                with gr.Row():
                    width = gr.Number(
                        value=limits.DEFAULT_WIDTH,
                        step=limits.SIDE_MULTIPLE,
                        label=i18n("label.width"),
                        elem_id="width",
                        min_width=120,
                    )
                    height = gr.Number(
                        value=limits.DEFAULT_HEIGHT,
                        step=limits.SIDE_MULTIPLE,
                        label=i18n("label.height"),
                        elem_id="height",
                        min_width=120,
                    )
                gr.Markdown(i18n("info.size"), elem_classes="glm-note")
                num_images = gr.Slider(
                    limits.MIN_IMAGES,
                    limits.MAX_IMAGES,
                    value=limits.DEFAULT_NUM_IMAGES,
                    step=1,
                    label=i18n("label.num_images"),
                    elem_id="num-images",
                )
                with gr.Accordion(i18n("label.advanced"), open=False, elem_id="advanced"):
                    negative_prompt = gr.Textbox(
                        label=i18n("label.negative_prompt"),
                        lines=2,
                        placeholder=i18n("placeholder.negative_prompt"),
                        elem_id="negative-prompt",
                    )
                    with gr.Row():
                        seed = gr.Number(value=0, step=1, label=i18n("label.seed"), elem_id="seed", min_width=120)
                        randomize_seed = gr.Checkbox(
                            value=True, label=i18n("label.randomize_seed"), elem_id="randomize-seed"
                        )
                    steps = gr.Slider(
                        limits.MIN_STEPS,
                        limits.MAX_STEPS,
                        value=limits.DEFAULT_STEPS,
                        step=1,
                        label=i18n("label.steps"),
                        elem_id="steps",
                    )
                    guidance = gr.Slider(
                        limits.MIN_GUIDANCE,
                        limits.MAX_GUIDANCE,
                        value=limits.DEFAULT_GUIDANCE,
                        step=0.1,
                        label=i18n("label.guidance"),
                        elem_id="guidance",
                    )
                with gr.Accordion(i18n("label.preview"), open=False, elem_id="preview"):
                    final_prompt = gr.Textbox(
                        label=i18n("label.final_prompt"), interactive=False, lines=2, elem_id="final-prompt"
                    )
                    final_negative = gr.Textbox(
                        label=i18n("label.final_negative_prompt"), interactive=False, elem_id="final-negative-prompt"
                    )
            with gr.Column(scale=6, min_width=320):
                gallery = gr.Gallery(
                    label=i18n("label.result"),
                    columns=2,
                    height=520,
                    object_fit="contain",
                    format="png",
                    elem_id="result",
                    interactive=False,
                )
                timings = gr.Markdown(i18n("timings.empty"), elem_id="timings")
                seed_used = gr.Number(
                    value=None, label=i18n("label.seed_used"), interactive=False, elem_id="seed-used"
                )
                with gr.Accordion(i18n("label.details"), open=False):
                    details = gr.JSON(label=i18n("label.details"), elem_id="details")

        # The Size box follows an example too, so it never names a preset the example's size is not.
        preset_of_size = {(p.width, p.height): p.label for p in parts.presets}
        examples_data = [
            [
                e["prompt"],
                e["style"],
                e["width"],
                e["height"],
                preset_of_size.get((e["width"], e["height"]), CUSTOM_SIZE),
            ]
            for e in parts.examples
        ]
        # Labels instead of a table: Gradio does not translate a table's headers or the style names in it.
        # Size first: Gradio shortens a long label at its end.
        example_labels = [f"{e['width']}×{e['height']} · {e['prompt']}" for e in parts.examples]
        gr.Examples(
            examples=examples_data,
            inputs=[prompt, style, width, height, size_preset],
            cache_examples=False,
            label=i18n("label.examples"),
            examples_per_page=10,
            example_labels=example_labels,
            elem_id="examples",
        )

        with gr.Accordion(i18n("label.history"), open=True, elem_id="history-section"):
            gr.Markdown(i18n("history.note"), elem_classes="glm-note")
            # Shown once there is something in it: an empty gallery box looks broken.
            history_empty = gr.Markdown(i18n("history.empty"), elem_id="history-empty")
            history = gr.Gallery(
                label=i18n("label.history"),
                columns=6,
                height=240,
                allow_preview=False,
                elem_id="history",
                interactive=False,
                fit_columns=False,
                visible=False,
            )
            with gr.Row():
                clear_history = gr.Button(i18n("button.clear_history"), size="sm", elem_id="clear-history")
                reset_session = gr.Button(i18n("button.new_session"), size="sm", elem_id="new-session")
        with gr.Accordion(i18n("label.log"), open=False, elem_id="log-section"):
            gr.Markdown(i18n("log.note"), elem_classes="glm-note")
            session_log = gr.JSON(label=i18n("label.log"), elem_id="session-log")
            log_download = gr.DownloadButton(i18n("button.download_log"), size="sm", elem_id="download-log")
        with gr.Accordion(i18n("label.privacy"), open=False, elem_id="privacy-section"):
            privacy_notice = gr.Markdown(elem_id="privacy-notice")
            keep_history = gr.Checkbox(
                value=True, label=i18n("label.keep_history"), info=i18n("info.keep_history"), elem_id="keep-history"
            )
            embed_metadata = gr.Checkbox(
                value=True,
                label=i18n("label.embed_metadata"),
                info=i18n("info.embed_metadata"),
                elem_id="embed-metadata",
            )

        request_inputs = [
            prompt,
            negative_prompt,
            style,
            width,
            height,
            num_images,
            seed,
            randomize_seed,
            steps,
            guidance,
        ]

        # ---- model status -------------------------------------------------------------------------------
        def show_status(request: gr.Request) -> tuple[str, gr.Timer, str]:
            lang = _lang(request)
            loader = parts.loader
            names = {"model": loader.model_name}
            if loader.state is ModelState.LOADING:
                text = translator.t("status.loading", lang, **names)
            elif loader.state is ModelState.READY:
                text = translator.t("status.ready", lang, device=loader.device.type, dtype=loader.dtype_name, **names)
            else:
                text = translator.t("status.failed", lang, reason=translator.t(loader.error_key, lang))
            if loader.choice is not None and loader.choice.is_tiny:
                text += "\n\n" + translator.t("status.auto_tiny" if loader.choice.auto_tiny else "status.tiny", lang)
            notice = translator.t(
                "privacy.notice",
                lang,
                session_ttl=round(settings.session_ttl / 60),
                file_ttl=round(settings.file_ttl / 60),
            )
            notice += " " + translator.t("privacy.log_on" if settings.log_prompts else "privacy.log_off", lang)
            if parts.enhancer is not None:
                notice += " " + translator.t("privacy.enhancer", lang)
            return text, gr.Timer(active=loader.state is ModelState.LOADING), notice

        status_outputs = [model_status, status_timer, privacy_notice]
        demo.load(
            show_status, None, status_outputs, api_visibility="private", concurrency_limit=None, show_progress="hidden"
        )
        status_timer.tick(
            show_status, None, status_outputs, api_visibility="private", concurrency_limit=None, show_progress="hidden"
        )

        # ---- generation ---------------------------------------------------------------------------------
        async def check(
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
        ) -> Any:
            """Runs before the job may join the queue: bad input and floods never reach the GPU.

            ``async`` (it never waits): it then runs on the event loop between Gradio's --max-queue check and the
            job's append, so simultaneous requests cannot all pass both caps at once (on worker threads, 30 at
            once put 28 jobs into a queue of 4)."""
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
            client = _client_of(request, settings)
            try:
                service.admit(
                    raw, client, request.session_hash or client, _jobs_of_client(demo, client, settings), session
                )
            except (InputError, Refused) as exc:
                # One result per input: the message shows on the field at fault (the prompt for limits).
                field = exc.params.get("field") or (
                    "width" if "width" in exc.params else "style" if exc.key == "error.unknown_style" else "prompt"
                )
                message = texts(exc.key, _lang(request), **exc.params)
                return [gr.validate(name != field, message if name == field else "") for name in API_FIELDS] + [None]
            request.request.state.glmimage_enqueued_at = time.monotonic()
            return [gr.validate(True, "")] * len(API_FIELDS) + [None]

        def generate(
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
        ) -> Any:
            """Generate images; returns them, the seed used, and the parameters with timings."""
            lang = _lang(request)
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
            enqueued = getattr(request.request.state, "glmimage_enqueued_at", time.monotonic())
            queue_s = time.monotonic() - enqueued
            try:
                # The check above already passed these values; this rebuilds the typed request from them.
                req = service.validated(raw)
                # The steps run on the engine's thread; Gradio finds this event's progress bar through context
                # variables, which a plain call from that thread would not see (the page showed no steps).
                event_context = contextvars.copy_context()
                outcome = service.run(
                    req,
                    session,
                    queue_s,
                    on_step=lambda done, total: event_context.run(
                        progress, (done, total), desc=translator.t("status.progress", lang)
                    ),
                    should_stop=lambda: (
                        session.stop_requested_at >= enqueued - 0.001 or _client_gone(demo, request.session_hash)
                    ),
                )
            except InputError as exc:
                raise gr.Error(
                    texts(exc.key, lang, **exc.params), title=texts("error.title", lang), print_exception=False
                ) from None
            except EngineError as exc:
                if exc.key == "status.stopped":
                    gr.Info(texts(exc.key, lang, **exc.params))
                    return gr.skip(), gr.skip(), gr.skip(), session
                if exc.key.startswith("load."):
                    raise gr.Error(
                        texts("error.model_unavailable", lang, reason=texts(exc.key, lang)), print_exception=False
                    ) from None
                raise gr.Error(
                    texts(exc.key, lang, **exc.params), title=texts("error.title", lang), print_exception=False
                ) from None
            return outcome.files, outcome.seed, outcome.details, session

        def after_generation(session: Session, details: dict | None, request: gr.Request) -> tuple:
            lang = _lang(request)
            line = (
                translator.t("timings.line", lang, seed=details["seed"], **details["timings"])
                if details
                else gr.skip()
            )
            return (line, *_history_and_log(session))

        def _history_and_log(session: Session) -> tuple:
            items = [
                (entry.files[0], f"#{entry.seed} · {entry.request['prompt'][:60]}")
                for entry in session.history
                if entry.files
            ]
            log_file = session.new_file(".json")
            for old in session.folder.glob("*.json"):
                if old != log_file:
                    old.unlink(missing_ok=True)
            log_file.write_text(session.log_json(), encoding="utf-8")
            return (
                gr.update(value=items, visible=bool(items)),
                gr.update(visible=not items),
                session.log,
                gr.DownloadButton(value=str(log_file)),
            )

        history_outputs = [history, history_empty, session_log, log_download]
        gen_event = gr.on(
            [prompt.submit, run.click],
            generate,
            inputs=[*request_inputs, session_state],
            outputs=[gallery, seed_used, details, session_state],
            api_name="generate",
            validator=check,
            preprocess=False,
            concurrency_limit=settings.queue_concurrency,  # --concurrency, or with Ray the most replicas
            concurrency_id="gpu",
            show_progress_on=gallery,
        )
        gen_event.then(
            after_generation,
            [session_state, details],
            [timings, *history_outputs],
            api_visibility="private",
            concurrency_limit=None,
            show_progress="hidden",
        )

        def request_stop(session: Session) -> None:
            session.stop_requested_at = time.monotonic()

        stop.click(
            request_stop,
            [session_state],
            None,
            api_visibility="private",
            concurrency_limit=None,
            show_progress="hidden",
        )

        # ---- history, session, privacy -------------------------------------------------------------------
        def restore(session: Session, evt: gr.SelectData, request: gr.Request) -> tuple:
            if evt.index is None or not 0 <= evt.index < len(session.history):
                return (gr.skip(),) * 14
            entry = session.history[evt.index]
            p = entry.request
            # The seed and timings shown under the image are the restored entry's, not the last generation's.
            line = translator.t("timings.line", _lang(request), seed=entry.seed, **entry.timings)
            return (
                p["prompt"],
                p["negative_prompt"],
                p["style"],
                p["width"],
                p["height"],
                p["num_images"],
                entry.seed,
                False,
                p["num_inference_steps"],
                p["guidance_scale"],
                _matching_preset(p["width"], p["height"]),
                entry.files,
                entry.seed,
                line,
            )

        history.select(
            restore,
            [session_state],
            [*request_inputs, size_preset, gallery, seed_used, timings],
            api_visibility="private",
            concurrency_limit=None,
            show_progress="hidden",
        )

        def do_clear(session: Session, request: gr.Request) -> tuple:
            count = session.clear_history()
            session.record("history_cleared", entries=count)
            gr.Info(translator.t("info.history_cleared", _lang(request)))
            return (session, *_history_and_log(session))

        clear_history.click(
            do_clear,
            [session_state],
            [session_state, *history_outputs],
            api_visibility="private",
            concurrency_limit=None,
            show_progress="hidden",
        )

        def do_new_session(session: Session, request: gr.Request) -> tuple:
            session.dispose()
            fresh = Session(files_root)
            fresh.record("new_session")
            gr.Info(translator.t("info.new_session", _lang(request)))
            defaults = (
                "",
                "",
                NO_STYLE,
                limits.DEFAULT_WIDTH,
                limits.DEFAULT_HEIGHT,
                limits.DEFAULT_NUM_IMAGES,
                0,
                True,
                limits.DEFAULT_STEPS,
                limits.DEFAULT_GUIDANCE,
                default_preset,
                [],
                None,
                None,
                translator.t("timings.empty", _lang(request)),
                True,
                True,
                "",
                "",
            )
            return (fresh, *defaults, *_history_and_log(fresh))

        reset_session.click(
            do_new_session,
            [session_state],
            [
                session_state,
                *request_inputs,
                size_preset,
                gallery,
                seed_used,
                details,
                timings,
                keep_history,
                embed_metadata,
                final_prompt,
                final_negative,
                *history_outputs,
            ],
            api_visibility="private",
            concurrency_limit=None,
            show_progress="hidden",
        )

        def set_keep_history(session: Session, keep: bool, request: gr.Request) -> tuple:
            session.keep_history = bool(keep)
            session.record("setting_changed", keep_history=session.keep_history)
            if not keep:
                session.forget_prompts()
            if not keep and session.history:
                session.clear_history()
                gr.Info(translator.t("info.history_off", _lang(request)))
            return (session, *_history_and_log(session))

        keep_history.input(
            set_keep_history,
            [session_state, keep_history],
            [session_state, *history_outputs],
            api_visibility="private",
            concurrency_limit=None,
            show_progress="hidden",
        )

        def set_embed_metadata(session: Session, embed: bool) -> tuple:
            session.embed_metadata = bool(embed)
            session.record("setting_changed", embed_metadata=session.embed_metadata)
            return (session, *_history_and_log(session))

        embed_metadata.input(
            set_embed_metadata,
            [session_state, embed_metadata],
            [session_state, *history_outputs],
            api_visibility="private",
            concurrency_limit=None,
            show_progress="hidden",
        )

        async def on_unload(request: gr.Request) -> None:
            """The tab closed: drop the session's history and files now, not an hour later. Async, so it runs on
            the event loop, never at the same time as Gradio's own expiry of states."""
            forget_session(demo, request.session_hash)

        demo.unload(on_unload)

        # ---- sizes and preview ----------------------------------------------------------------------------
        def pick_preset(label: str) -> tuple:
            preset = preset_by_label.get(label)
            return (preset.width, preset.height) if preset else (gr.skip(), gr.skip())

        size_preset.input(
            pick_preset,
            [size_preset],
            [width, height],
            api_visibility="private",
            concurrency_limit=None,
            show_progress="hidden",
            queue=False,
        )

        def _capped(changed: int, other: int) -> int:
            """The other side, lowered if needed so the image stays within the pixel limit."""
            if size_problem(changed, other) == "error.too_many_pixels" and size_problem(changed, 512) is None:
                return largest_legal_side(changed)
            return other

        def _matching_preset(w: int, h: int) -> str:
            return next((label for label, p in preset_by_label.items() if (p.width, p.height) == (w, h)), CUSTOM_SIZE)

        # The other side is sent back only when lowered: sending it unchanged would overwrite what the visitor
        # typed there while this event was on its way (typing 512 into both boxes gave a 512x1024 image).
        def width_changed(w: Any, h: Any) -> tuple:
            if not all(isinstance(v, (int, float)) for v in (w, h)):
                return gr.skip(), CUSTOM_SIZE
            new_h = _capped(int(w), int(h))
            return new_h if new_h != h else gr.skip(), _matching_preset(w, new_h)

        def height_changed(w: Any, h: Any) -> tuple:
            if not all(isinstance(v, (int, float)) for v in (w, h)):
                return gr.skip(), CUSTOM_SIZE
            new_w = _capped(int(h), int(w))
            return new_w if new_w != w else gr.skip(), _matching_preset(new_w, h)

        width.input(
            width_changed,
            [width, height],
            [height, size_preset],
            api_visibility="private",
            concurrency_limit=None,
            show_progress="hidden",
            preprocess=False,
        )
        height.input(
            height_changed,
            [width, height],
            [width, size_preset],
            api_visibility="private",
            concurrency_limit=None,
            show_progress="hidden",
            preprocess=False,
        )

        def preview(prompt: Any, negative_prompt: Any, style: Any) -> tuple:
            if not isinstance(style, str) or style not in styles:
                return gr.skip(), gr.skip()
            styled = styles.apply(style, str(prompt or ""), str(negative_prompt or ""))
            return styled.prompt, styled.negative_prompt

        gr.on(
            [prompt.change, negative_prompt.change, style.change],
            preview,
            [prompt, negative_prompt, style],
            [final_prompt, final_negative],
            api_visibility="private",
            concurrency_limit=None,
            show_progress="hidden",
            trigger_mode="always_last",
            preprocess=False,
        )

        # ---- prompt enhancement -----------------------------------------------------------------------------
        def enhance_prompt(text: str, request: gr.Request) -> Any:
            lang = _lang(request)
            try:
                better = parts.enhancer.enhance(text)  # type: ignore[union-attr]
            except EnhancerError as exc:
                gr.Warning(translator.t(exc.key, lang))
                return gr.skip()
            gr.Info(translator.t("enhancer.done", lang))
            return better

        if parts.enhancer is not None:
            enhance.click(
                enhance_prompt,
                [prompt],
                [prompt],
                api_visibility="private",
                concurrency_limit=4,
                concurrency_id="enhancer",
            )

    return demo
