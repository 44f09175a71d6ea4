"""The page's components, laid out top to bottom; no event and no logic (those are in handlers.py and wiring.py).

:func:`build_page` is called inside ``gr.Blocks`` and returns a :class:`Page` that names every component the
handlers read or update. Each part of the page has its own function below, in page order; a new banner or notice
goes in :func:`_header`, a new control in the part it belongs to, and a field for it in :class:`Page`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from .. import limits
from ..i18n import Translator
from ..models.families import COGVIEW4, Family
from ..sessions import Session, dispose_session
from ..sizes import SizePreset
from ..styles import NO_STYLE, StyleBook

# The browser tab's title (the page script puts a job's progress in front of it while one runs).
TITLE = "GLM Image"
# The Size dropdown's value when width and height match no preset (so the box never shows empty).
CUSTOM_SIZE = "custom"

CSS = """
#generate-row button { min-height: 3rem; }
#timings { min-height: 2.5rem; }
.glm-note p { font-size: var(--text-sm); opacity: 0.85; }
/* Whole images in the result: Gradio's square cells are wider than the box is tall, which cut images off. */
#result .grid-container { height: 100%; box-sizing: border-box; }
#result .thumbnail-item { aspect-ratio: auto; }
/* Drawn for the page script, out of sight and out of the layout. */
.glm-offscreen { position: absolute !important; left: -10000px; width: 1px; height: 1px; overflow: hidden; }
/* The Edit box: pictures whole, never cropped to square cells. */
#edit-pictures .thumbnail-item { aspect-ratio: auto; }
/* The maintenance banner stands out from the page. */
#maintenance-banner { border: 1px solid var(--color-accent); border-radius: var(--radius-lg);
  background: var(--color-accent-soft); padding: var(--spacing-md) var(--spacing-lg); }
"""
# How often an open page looks for the maintenance file's banner (only with --maintenance-file).
MAINTENANCE_POLL_S = 5.0


@dataclass
class Page:
    """Every component an event reads or updates, by name."""

    session: gr.State
    maintenance_banner: gr.Markdown
    maintenance_timer: gr.Timer
    model_status: gr.Markdown
    status_timer: gr.Timer
    # Generation controls, in /generate's parameter order (see request_inputs).
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    style: gr.Dropdown
    width: gr.Number
    height: gr.Number
    num_images: gr.Slider
    seed: gr.Number
    randomize_seed: gr.Checkbox
    steps: gr.Slider
    guidance: gr.Slider
    size_preset: gr.Dropdown
    run: gr.Button
    variations: gr.Button
    stop: gr.Button
    enhance: gr.Button
    final_prompt: gr.Textbox
    final_negative: gr.Textbox
    # Results.
    gallery: gr.Gallery
    timings: gr.Markdown
    seed_used: gr.Number
    details: gr.JSON
    # History, log, privacy.
    history_empty: gr.Markdown
    history: gr.Gallery
    clear_history: gr.Button
    reset_session: gr.Button
    session_log: gr.JSON
    log_download: gr.DownloadButton
    privacy_notice: gr.Markdown
    keep_history: gr.Checkbox
    embed_metadata: gr.Checkbox
    # Reading parameters from a picture.
    read_file: gr.File
    read_result: gr.JSON
    read_summary: gr.Markdown
    use_read: gr.Button
    # Download all.
    download_all: gr.Button
    download_all_file: gr.DownloadButton
    download_all_ready: gr.Textbox
    contact_line: gr.Markdown
    # Editing (/edit): shown in an "Edit pictures" tab when the model takes pictures; otherwise hidden, and /edit
    # refuses every call naming the model.
    edit_pictures: gr.Gallery
    edit_files: gr.File
    edit_prompt: gr.Textbox
    edit_run: gr.Button
    edit_stop: gr.Button
    before_after: gr.ImageSlider

    @property
    def settings_inputs(self) -> list[Any]:
        """The controls /generate and /edit share, in API order (``service.SETTINGS_FIELDS``)."""
        return [self.width, self.height, self.num_images, self.seed, self.randomize_seed, self.steps, self.guidance]

    @property
    def request_inputs(self) -> list[Any]:
        """The controls behind /generate's parameters, in API order (``service.API_FIELDS``)."""
        return [self.prompt, self.negative_prompt, self.style, *self.settings_inputs]

    @property
    def edit_inputs(self) -> list[Any]:
        """The controls behind /edit's parameters, in API order (``service.EDIT_FIELDS``)."""
        return [self.edit_prompt, self.edit_files, *self.settings_inputs]

    @property
    def history_outputs(self) -> list[Any]:
        """What shows the session's history and log; every event that changes them updates all four."""
        return [self.history, self.history_empty, self.session_log, self.log_download]


def default_preset(presets: list[SizePreset], family: Family = COGVIEW4) -> str:
    """The Size box's first value: the preset of the model's default size."""
    return preset_label(presets, *family.default_size)


def preset_label(presets: list[SizePreset], width: object, height: object) -> str:
    """The Size box's value for a size: its preset, or "custom"."""
    return next((p.label for p in presets if (p.width, p.height) == (width, height)), CUSTOM_SIZE)


def make_i18n(translator: Translator, styles: StyleBook, family: Family = COGVIEW4) -> gr.I18n:
    """The page's strings for ``gr.I18n``, plus the style names, which live in the styles file."""
    tables = translator.gradio_tables()
    for locale, table in tables.items():
        lang = "zh" if locale.startswith("zh") else "en"
        names = {f"style.{sid}": styles.get(sid).name[lang] for sid in styles.ids if sid != NO_STYLE}
        # The browser shows gr.I18n strings as they are: fill the placeholders of page strings here.
        note = table["history.note"].format(max=limits.MAX_HISTORY_ENTRIES)
        edit_note = table["edit.note"].format(max=max(1, family.max_reference_images))
        tables[locale] = {**table, **names, "history.note": note, "edit.note": edit_note}
    return gr.I18n(**tables)


def build_page(
    i18n: gr.I18n,
    styles: StyleBook,
    presets: list[SizePreset],
    examples: list[dict[str, Any]],
    *,
    files_root: str,
    session_ttl: float,
    with_enhancer: bool,
    with_maintenance: bool = False,
    family: Family = COGVIEW4,
) -> Page:
    """Lay out the page inside the current ``gr.Blocks``, for the model's ``family``: its defaults, ranges and size
    rules; no negative prompt where it takes none; and, where it takes pictures, two tabs: "Create from text" and
    "Edit pictures"."""
    # A plain default (not a callable, which Gradio would expose as a public load endpoint); Gradio gives
    # every visit its own deep copy.
    session = gr.State(value=Session(files_root), time_to_live=session_ttl, delete_callback=dispose_session)
    parts: dict[str, Any] = {"session": session, **_header(i18n, with_maintenance, family)}
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=320):
            if family.takes_reference_images:
                # A mode the visitor chooses and sees: Edit's button always edits the pictures shown above it, and
                # Generate never picks up pictures left in a box out of sight.
                with gr.Tabs(elem_id="mode"):
                    with gr.Tab(i18n("mode.create"), id="create", elem_id="create-tab"):
                        parts |= _prompt_and_buttons(i18n, with_enhancer)
                        parts |= _style(i18n, styles)
                    with gr.Tab(i18n("mode.edit"), id="edit", elem_id="edit-tab"):
                        parts |= _edit(i18n, visible=True)
            else:
                parts |= _prompt_and_buttons(i18n, with_enhancer)
                parts |= _style(i18n, styles)
            parts |= _size(i18n, presets, family)
            parts |= _advanced(i18n, family)
            parts |= _preview(i18n, family)
            parts |= _read_parameters(i18n)
        with gr.Column(scale=6, min_width=320):
            parts |= _results(i18n)
    _examples(i18n, presets, examples, parts)
    parts |= _history_and_log(i18n)
    parts |= _privacy(i18n)
    # The operator's support line (--contact), at the foot of the page; filled in by handlers.show_operator_notes.
    parts["contact_line"] = gr.Markdown(visible=False, elem_id="contact", elem_classes="glm-note")
    if not family.takes_reference_images:
        # /edit exists for every model (and refuses, naming this one); its controls are never shown.
        parts |= _edit(i18n, visible=False)
    return Page(**parts)


def _header(i18n: gr.I18n, with_maintenance: bool, family: Family) -> dict[str, Any]:
    gr.Markdown(i18n("app.header" if family is COGVIEW4 else "app.header_glm"), elem_id="header")
    # Banners and notices for every visitor go here, between the header and the status. The maintenance banner is
    # filled in by handlers.show_operator_notes, polled only while a --maintenance-file is set.
    return {
        "maintenance_banner": gr.Markdown(visible=False, elem_id="maintenance-banner"),
        "maintenance_timer": gr.Timer(MAINTENANCE_POLL_S, active=with_maintenance),
        "model_status": gr.Markdown(elem_id="model-status"),
        "status_timer": gr.Timer(1.0),
    }


def _prompt_and_buttons(i18n: gr.I18n, with_enhancer: bool) -> dict[str, Any]:
    prompt = gr.Textbox(
        label=i18n("label.prompt"), placeholder=i18n("placeholder.prompt"), lines=3, max_lines=10, elem_id="prompt"
    )
    with gr.Row(elem_id="generate-row"):
        run = gr.Button(i18n("button.generate"), variant="primary", scale=3, elem_id="generate")
        variations = gr.Button(i18n("button.variations"), variant="secondary", scale=2, elem_id="variations")
        # Enabled by the page script only while a job of this tab waits or runs (see gradio_adapter.page_script).
        stop = gr.Button(i18n("button.stop"), variant="stop", scale=1, interactive=False, elem_id="stop")
    enhance = gr.Button(i18n("button.enhance"), size="sm", visible=with_enhancer, elem_id="enhance")
    return {"prompt": prompt, "run": run, "variations": variations, "stop": stop, "enhance": enhance}


def _style(i18n: gr.I18n, styles: StyleBook) -> dict[str, Any]:
    style = gr.Dropdown(
        choices=[(i18n(f"style.{sid}"), sid) for sid in styles.ids],
        value=NO_STYLE,
        label=i18n("label.style"),
        elem_id="style",
    )
    return {"style": style}


def _size(i18n: gr.I18n, presets: list[SizePreset], family: Family) -> dict[str, Any]:
    rules = family.sizes
    width_default, height_default = family.default_size
    size_preset = gr.Dropdown(
        choices=[*(p.label for p in presets), (i18n("size.custom"), CUSTOM_SIZE)],
        value=default_preset(presets, family),
        label=i18n("label.size"),
        elem_id="size-preset",
    )
    with gr.Row():
        width = gr.Number(
            value=width_default,
            step=rules.multiple,
            label=i18n("label.width"),
            elem_id="width",
            min_width=120,
        )
        height = gr.Number(
            value=height_default,
            step=rules.multiple,
            label=i18n("label.height"),
            elem_id="height",
            min_width=120,
        )
    gr.Markdown(i18n("info.size" if family is COGVIEW4 else "info.size_glm"), elem_classes="glm-note")
    num_images = gr.Slider(
        limits.MIN_IMAGES,
        family.max_images,
        value=limits.DEFAULT_NUM_IMAGES,
        step=1,
        label=i18n("label.num_images"),
        elem_id="num-images",
    )
    return {"size_preset": size_preset, "width": width, "height": height, "num_images": num_images}


def _edit(i18n: gr.I18n, *, visible: bool) -> dict[str, Any]:
    """The Edit tab: the pictures (drop, click or paste; each taken in by glmimage.images as it arrives), what to
    change, and Edit with its own Stop."""
    with gr.Column(visible=visible, elem_id="edit-section"):
        gr.Markdown(i18n("edit.note"), elem_classes="glm-note")
        edit_pictures = gr.Gallery(
            label=i18n("label.edit_pictures"),
            interactive=True,
            sources=["upload", "clipboard"],
            file_types=[".png", ".jpg", ".jpeg", ".webp"],
            columns=4,
            height=240,
            object_fit="contain",
            allow_preview=False,
            fit_columns=False,
            elem_id="edit-pictures",
        )
        # What Edit sends as /edit's ``images``, a list of files: the box's pictures, copied here whenever the box
        # changes (handlers.mirror_pictures). Never shown.
        edit_files = gr.File(
            label=i18n("label.edit_pictures"),
            file_count="multiple",
            file_types=[".png", ".jpg", ".jpeg", ".webp"],
            visible=False,
            elem_id="edit-files",
        )
        edit_prompt = gr.Textbox(
            label=i18n("label.edit_prompt"),
            placeholder=i18n("placeholder.edit_prompt"),
            lines=3,
            max_lines=10,
            elem_id="edit-prompt",
        )
        with gr.Row(elem_id="edit-row"):
            edit_run = gr.Button(i18n("button.edit"), variant="primary", scale=3, elem_id="edit-run")
            # Enabled by the page script while a job of this tab waits or runs, as Stop beside Generate is.
            edit_stop = gr.Button(i18n("button.stop"), variant="stop", scale=1, interactive=False, elem_id="edit-stop")
    return {
        "edit_pictures": edit_pictures,
        "edit_files": edit_files,
        "edit_prompt": edit_prompt,
        "edit_run": edit_run,
        "edit_stop": edit_stop,
    }


def _advanced(i18n: gr.I18n, family: Family) -> dict[str, Any]:
    with gr.Accordion(i18n("label.advanced"), open=False, elem_id="advanced"):
        # Hidden for a model without one: validation refuses a non-empty one, so the page never offers it.
        negative_prompt = gr.Textbox(
            "",  # an initial value: API clients may leave the negative prompt out
            label=i18n("label.negative_prompt"),
            lines=2,
            placeholder=i18n("placeholder.negative_prompt"),
            elem_id="negative-prompt",
            visible=family.negative_prompt,
        )
        with gr.Row():
            seed = gr.Number(value=0, step=1, label=i18n("label.seed"), elem_id="seed", min_width=120)
            randomize_seed = gr.Checkbox(value=True, label=i18n("label.randomize_seed"), elem_id="randomize-seed")
        steps = gr.Slider(
            *family.steps_range,
            value=family.default_steps,
            step=1,
            label=i18n("label.steps"),
            elem_id="steps",
        )
        guidance = gr.Slider(
            *family.guidance_range,
            value=family.default_guidance,
            step=0.1,
            label=i18n("label.guidance"),
            elem_id="guidance",
        )
    return {
        "negative_prompt": negative_prompt,
        "seed": seed,
        "randomize_seed": randomize_seed,
        "steps": steps,
        "guidance": guidance,
    }


def _preview(i18n: gr.I18n, family: Family) -> dict[str, Any]:
    with gr.Accordion(i18n("label.preview"), open=False, elem_id="preview"):
        final_prompt = gr.Textbox(label=i18n("label.final_prompt"), interactive=False, lines=2, elem_id="final-prompt")
        final_negative = gr.Textbox(
            label=i18n("label.final_negative_prompt"),
            interactive=False,
            elem_id="final-negative-prompt",
            visible=family.negative_prompt,
        )
    return {"final_prompt": final_prompt, "final_negative": final_negative}


def _results(i18n: gr.I18n) -> dict[str, Any]:
    # After an edit: its first picture and first result, one over the other, a handle to slide between them.
    before_after = gr.ImageSlider(
        label=i18n("label.before_after"),
        type="filepath",
        interactive=False,
        visible=False,
        max_height=520,
        elem_id="before-after",
    )
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
    seed_used = gr.Number(value=None, label=i18n("label.seed_used"), interactive=False, elem_id="seed-used")
    with gr.Accordion(i18n("label.details"), open=False):
        details = gr.JSON(label=i18n("label.details"), elem_id="details")
    return {
        "before_after": before_after,
        "gallery": gallery,
        "timings": timings,
        "seed_used": seed_used,
        "details": details,
    }


def _examples(i18n: gr.I18n, presets: list[SizePreset], examples: list[dict[str, Any]], parts: dict[str, Any]) -> None:
    # The Size box follows an example too, so it never names a preset the example's size is not.
    rows = [
        [e["prompt"], e["style"], e["width"], e["height"], preset_label(presets, e["width"], e["height"])]
        for e in examples
    ]
    # Labels instead of a table: Gradio does not translate a table's headers or the style names in it.
    # Size first: Gradio shortens a long label at its end.
    labels = [f"{e['width']}×{e['height']} · {e['prompt']}" for e in examples]
    gr.Examples(
        examples=rows,
        inputs=[parts["prompt"], parts["style"], parts["width"], parts["height"], parts["size_preset"]],
        cache_examples=False,
        label=i18n("label.examples"),
        examples_per_page=10,
        example_labels=labels,
        elem_id="examples",
    )


def _history_and_log(i18n: gr.I18n) -> dict[str, Any]:
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
            downloads = _download_all(i18n)
    with gr.Accordion(i18n("label.log"), open=False, elem_id="log-section"):
        gr.Markdown(i18n("log.note"), elem_classes="glm-note")
        session_log = gr.JSON(label=i18n("label.log"), elem_id="session-log")
        log_download = gr.DownloadButton(i18n("button.download_log"), size="sm", elem_id="download-log")
    return {
        "history_empty": history_empty,
        "history": history,
        "clear_history": clear_history,
        "reset_session": reset_session,
        "session_log": session_log,
        "log_download": log_download,
        **downloads,
    }


def _download_all(i18n: gr.I18n) -> dict[str, Any]:
    # The zip is built when pressed, into the hidden button's value; a page-script step then saves it (a
    # DownloadButton saves the value it had before its own click handler ran, which would take two presses).
    download_all = gr.Button(i18n("button.download_all"), size="sm", elem_id="download-all")
    # Drawn offscreen, not hidden: the page script presses it once the zip is in it (see gradio_adapter.page_script;
    # a hidden component is not drawn at all). The ticket changes with every new zip.
    download_all_file = gr.DownloadButton(
        i18n("button.download_all"), elem_id="download-all-file", elem_classes="glm-offscreen"
    )
    download_all_ready = gr.Textbox(
        show_label=False,
        container=False,
        interactive=False,
        elem_id="download-all-ready",
        elem_classes="glm-offscreen",
    )
    return {
        "download_all": download_all,
        "download_all_file": download_all_file,
        "download_all_ready": download_all_ready,
    }


def _read_parameters(i18n: gr.I18n) -> dict[str, Any]:
    with gr.Accordion(i18n("label.read_parameters"), open=False, elem_id="read-parameters"):
        gr.Markdown(i18n("read.note"), elem_classes="glm-note")
        # Any file type: a picture that is not a PNG gets the app's own message, in the visitor's language.
        read_file = gr.File(label=i18n("label.read_file"), file_count="single", elem_id="read-file")
        read_summary = gr.Markdown(i18n("read.empty"), elem_id="read-summary")
        # What /read_parameters returns; "Use these settings" reads it. Not shown: the summary says it in words.
        read_result = gr.JSON(visible=False, elem_id="read-result")
        use_read = gr.Button(i18n("button.use_parameters"), size="sm", interactive=False, elem_id="use-parameters")
    return {"read_file": read_file, "read_result": read_result, "read_summary": read_summary, "use_read": use_read}


def _privacy(i18n: gr.I18n) -> dict[str, Any]:
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
    return {"privacy_notice": privacy_notice, "keep_history": keep_history, "embed_metadata": embed_metadata}
