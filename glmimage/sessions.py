"""Per-session data: history, the session log, privacy settings and the image files behind them.

A :class:`Session` lives only in the visitor's ``gr.State`` (server memory). Its images are written to one
folder of its own under Gradio's temporary folder, and :meth:`Session.dispose` deletes that folder when the
session ends (tab closed, time-to-live passed, New session), so nothing outlives the visit. A job still running
then stops at its next step and saves nothing: once disposed, a session takes no file, history entry or log line.
Changes to a session (a finishing job, clear, privacy toggles, dispose) are serialised by its ``lock``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from .limits import MAX_HISTORY_ENTRIES, MAX_LOG_ENTRIES
from .requests import GenerationRequest

log = logging.getLogger("glmimage.sessions")
# What the visitor typed: left out of the session log while "keep history in this session" is off.
PROMPT_FIELDS = ("prompt", "negative_prompt")


def a1111_parameters(
    prompt: str,
    negative_prompt: str,
    request: GenerationRequest,
    seed: int,
    model: str,
    sampler: str = "FlowMatchEuler",
) -> str:
    """The ``parameters`` text of an AUTOMATIC1111 PNG, which other tools (and A1111's PNG Info) read. An edit
    says how many pictures it started from; the pictures themselves never go into the PNG. ``sampler`` is the
    model family's (``Family.sampler``)."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    settings = (
        f"Steps: {request.num_inference_steps}, Sampler: {sampler}, CFG scale: {request.guidance_scale:g}, "
        f"Seed: {seed}, Size: {request.width}x{request.height}, Model: {model}, Style: {request.style}"
    )
    if request.images:
        settings += f", Reference images: {len(request.images)}"
    lines.append(settings)
    return "\n".join(lines)


def save_png(image: Image.Image, path: Path, parameters: str | None) -> Path:
    """Write the PNG; with ``parameters`` it carries them in a ``parameters`` text chunk, without it no metadata."""
    info = None
    if parameters is not None:
        info = PngImagePlugin.PngInfo()
        info.add_itxt("parameters", parameters)
    # compress_level 1: the images are temporary, and level 6 costs ~30 ms more per noisy 512x512 image.
    image.save(path, format="PNG", pnginfo=info, compress_level=1)
    return path


@dataclass
class HistoryEntry:
    """One generation kept in the session's history: what a click on it restores."""

    id: str
    created: float  # time.time(): entries older than --file-ttl are dropped with their files
    files: list[str]
    request: dict[str, Any]  # the request's parameters (GenerationRequest.to_dict())
    seed: int  # the seed actually used
    timings: dict[str, float]


@dataclass
class Session:
    """Everything GLM Image keeps about one visitor, in memory only."""

    files_root: str
    # Set on first use, not at construction: Gradio deep-copies one default Session into every new visit.
    id: str = ""
    keep_history: bool = True
    embed_metadata: bool = True
    history: list[HistoryEntry] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)
    started: float = 0.0
    # time.monotonic() of the last Stop press: jobs queued before it stop at their next step.
    stop_requested_at: float = float("-inf")
    # True once the session ended: its running job stops, and nothing is written into it any more.
    disposed: bool = False
    # The pictures in the page's Edit box: clean copies (glmimage.images intake) in this session's folder, kept
    # while they are in the box, so one picture can be edited again and again; they go with the folder.
    pictures: list[str] = field(default_factory=list)
    # Which of Gradio's upload paths each picture was taken in from, so a box value sent before its first picture
    # came back (a second drop soon after the first) still finds it.
    picture_uploads: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Not a dataclass field: Gradio copies a State's value field by field (dataclasses.asdict), and a lock
        # cannot be copied. Re-entrant: a change may call another (clear_history inside dispose).
        self.lock = threading.RLock()

    def __deepcopy__(self, memo: dict[int, Any]) -> Session:
        """Gradio deep-copies the default Session into every new visit; each copy gets a lock of its own."""
        return Session(**{f.name: copy.deepcopy(getattr(self, f.name), memo) for f in fields(self)})

    def _begin(self) -> None:
        if not self.id:
            self.id = uuid.uuid4().hex
            self.started = time.time()

    @property
    def folder(self) -> Path:
        self._begin()
        return Path(self.files_root) / f"session-{self.id}"

    def new_file(self, suffix: str = ".png") -> Path:
        """A new file name in the session's folder (created if needed). Refused once the session ended, so its
        folder, deleted by :meth:`dispose`, never comes back."""
        with self.lock:
            if self.disposed:
                raise SessionEnded(self.id)
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.folder)  # a folder in use is never an old empty one to the FileSweeper
            self.folder.mkdir(parents=True, exist_ok=True)
            return self.folder / f"{uuid.uuid4().hex}{suffix}"

    def record(self, event: str, **details: Any) -> dict[str, Any]:
        """Append one event to the session log (bounded: the oldest entries go first). With "keep history" off
        the log keeps what happened but not the prompt text. Nothing is kept once the session ended."""
        with self.lock:
            self._begin()
            if not self.keep_history:
                details = _without_prompts(details)
            entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime()), "event": event, **details}
            if not self.disposed:
                self.log.append(entry)
                del self.log[:-MAX_LOG_ENTRIES]
            return entry

    def add_history(self, entry: HistoryEntry) -> None:
        """Newest first, at most MAX_HISTORY_ENTRIES; the files of entries that fall off are deleted."""
        with self.lock:
            if self.disposed:
                _delete_files(entry.files)
                return
            self.history.insert(0, entry)
            for dropped in self.history[MAX_HISTORY_ENTRIES:]:
                _delete_files(dropped.files)
            del self.history[MAX_HISTORY_ENTRIES:]

    def drop_expired(self, max_age_s: float, now: float | None = None) -> None:
        """Forget entries whose files the temp-file clean-up has deleted or is about to."""
        now = time.time() if now is None else now
        with self.lock:
            expired = [e for e in self.history if now - e.created >= max_age_s]
            for entry in expired:
                _delete_files(entry.files)
            self.history = [e for e in self.history if e not in expired]

    def clear_history(self) -> int:
        """Delete every history entry and every file of this session but the pictures in its Edit box; returns how
        many entries went."""
        with self.lock:
            count = len(self.history)
            self.history.clear()
            if not self.pictures:
                shutil.rmtree(self.folder, ignore_errors=True)
                return count
            kept = {Path(picture).name for picture in self.pictures}
            for path in self.folder.iterdir():
                if path.name in kept:
                    continue
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            return count

    def forget_prompts(self) -> None:
        """With "keep history" turned off, the log's earlier entries lose their prompt text too."""
        with self.lock:
            self.log = [_without_prompts(entry) for entry in self.log]

    def dispose(self) -> None:
        """The session is over: drop everything it kept (called by Gradio when the state expires). A job still
        running stops at its next step (it asks :attr:`disposed`) and saves nothing."""
        with self.lock:
            self.disposed = True
            self.pictures.clear()  # first, so the whole folder goes
            self.picture_uploads.clear()
            self.clear_history()
            self.log.clear()

    def log_json(self) -> str:
        self._begin()
        return json.dumps(
            {"session_started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.started)), "events": self.log},
            ensure_ascii=False,
            indent=2,
        )


class SessionEnded(RuntimeError):
    """Something tried to write into a session that has ended."""


def _without_prompts(details: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in details.items() if name not in PROMPT_FIELDS}


def _delete_files(files: list[str]) -> None:
    for name in files:
        Path(name).unlink(missing_ok=True)


def dispose_session(session: Session | None) -> None:
    """``gr.State`` delete callback."""
    if isinstance(session, Session):
        session.dispose()


class FileSweeper:
    """Deletes generated files older than ``ttl_s`` on a schedule, and the whole folder at shutdown.

    Gradio's own ``delete_cache`` only knows files it copied itself; GLM Image writes its files straight into
    Gradio's temporary folder (so they are served without a copy), so it cleans up after itself.
    """

    def __init__(self, root: str | Path, ttl_s: float, interval_s: float | None = None) -> None:
        self.root = Path(root)
        self.ttl_s = ttl_s
        self.interval_s = interval_s if interval_s is not None else max(1.0, min(60.0, ttl_s / 4))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep(self, now: float | None = None) -> int:
        """Delete expired files, then session folders left empty for ``ttl_s`` (a folder's time changes with every
        file added or removed, and :meth:`Session.new_file` touches it), once; returns how many files went.

        Sessions write into and clear their folders on their own threads meanwhile: a file or folder that vanishes
        under the walk (``os.walk`` passes over folders it cannot list) or fills before its removal is passed
        over, and the pass goes on."""
        now = time.time() if now is None else now
        removed = 0
        for folder, _, names in os.walk(self.root):
            for path in (Path(folder) / name for name in names):
                try:
                    if path.is_file() and now - path.stat().st_mtime >= self.ttl_s:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:
                    continue
        with contextlib.suppress(FileNotFoundError):
            for folder in list(self.root.iterdir()):
                try:
                    if folder.is_dir() and now - folder.stat().st_mtime >= self.ttl_s and not any(folder.iterdir()):
                        folder.rmdir()
                except OSError:
                    continue  # gone already, or a file arrived since the check (ENOTEMPTY)
        return removed

    def start(self) -> FileSweeper:
        self._thread = threading.Thread(target=self._run, name="glmimage-file-sweeper", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sweep()
            except OSError:
                log.exception("sweeping %s failed", self.root)

    def close(self) -> None:
        """Stop the schedule and delete every file GLM Image wrote."""
        self._stop.set()
        shutil.rmtree(self.root, ignore_errors=True)
