"""The one place that loads the pipeline (CogView4 or GLM-Image, as the model folder says): once, in the
background, shared by every session.

The page comes up at once; the model loads on its own thread and reports its state (loading / ready / failed
with the reason). A generation asked for while loading waits. A failed load leaves the server up and says what
to do.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from ..errors import AppError, ModelNotReady
from ..limits import DEFAULT_MODEL
from .accel import FastPaths, prepare_pipeline
from .families import Family, family_of_model
from .tiny import TINY_MODEL_NAME, ensure_tiny_model
from .tiny_glm import TINY_GLM_MODEL_NAME, ensure_tiny_glm_model

# Test models built offline into --cache-dir on first use, by name.
TINY_BUILDERS = {TINY_MODEL_NAME: ensure_tiny_model, TINY_GLM_MODEL_NAME: ensure_tiny_glm_model}

log = logging.getLogger("glmimage.loading")


class ModelState(enum.StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True)
class ModelChoice:
    """Which model to load and why; ``auto_tiny`` is True when the tiny one was chosen for want of a GPU."""

    name: str
    is_tiny: bool
    auto_tiny: bool


def choose_model(requested: str | None, cuda_available: bool) -> ModelChoice:
    if requested is None:
        if cuda_available:
            return ModelChoice(DEFAULT_MODEL, is_tiny=False, auto_tiny=False)
        return ModelChoice(TINY_MODEL_NAME, is_tiny=True, auto_tiny=True)
    return ModelChoice(requested, is_tiny=requested in TINY_BUILDERS, auto_tiny=False)


def choose_dtype(requested: str, device_type: str) -> str:
    """bfloat16 on CUDA, float32 on CPU (bfloat16 matmuls are slow on most CPUs). float16 is refused earlier."""
    if requested != "auto":
        return requested
    return "bfloat16" if device_type == "cuda" else "float32"


def failure_key(exc: BaseException, model: str) -> str:
    """Turn a loading error into a message key that says what to do."""
    if isinstance(exc, AppError):  # already worded (e.g. a model of a family GLM Image does not run)
        return exc.key
    text = f"{type(exc).__name__}: {exc}"
    if "OutOfMemory" in text or "out of memory" in text.lower():
        return "load.oom"
    looks_like_path = model.startswith((".", "/", "~")) or model.count("/") != 1  # a hub id is "org/name"
    hub_words = (
        "LocalEntryNotFound",
        "OfflineModeIsEnabled",
        "ConnectError",
        "ConnectionError",
        "MaxRetryError",
        "Name or service not known",
        "Temporary failure in name resolution",
        "offline",
        "huggingface.co",
        # diffusers' own words for a hub id that is not cached while HF_HUB_OFFLINE=1
        "not fully cached locally",
        "outgoing traffic has been disabled",
    )
    # Checked before the path test: huggingface_hub's LocalEntryNotFoundError is also a FileNotFoundError.
    if not looks_like_path and any(word in text for word in hub_words):
        return "load.no_hub"
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)) or (looks_like_path and not os.path.exists(model)):
        return "load.bad_path"
    if any(word in text for word in hub_words):
        return "load.no_hub"
    return "load.failed"


class PipelineLoader:
    """Loads the pipeline once on a background thread; ``wait()`` hands the same object to every caller."""

    def __init__(
        self,
        model: str | None,
        dtype: str = "auto",
        fast: FastPaths | None = None,
        *,
        warmup: bool = True,
        cache_dir: str | None = None,
    ) -> None:
        self.requested_model = model
        self.requested_dtype = dtype
        # Known once the loading thread has imported torch (so the page does not wait for that import).
        self.device: Any = None  # torch.device
        self.choice: ModelChoice | None = None
        self.dtype_name: str | None = None
        # The model's row of the capability table, known once its model_index.json has been read.
        self.family: Family | None = None
        self.fast = fast or FastPaths()
        self.warmup = warmup
        self.cache_dir = cache_dir
        self.state = ModelState.LOADING
        self.error_key = ""
        self.error_detail = ""
        self.load_seconds: float | None = None
        self._pipe: Any = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> PipelineLoader:
        """Start loading in the background (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._load, name="glmimage-loader", daemon=True)
            self._thread.start()
        return self

    def wait(self, timeout: float | None = None) -> Any:
        """The loaded pipeline; raises :class:`ModelNotReady` if loading failed or took longer than ``timeout``."""
        if not self._done.wait(timeout):
            raise ModelNotReady("load.timeout")
        if self.state is ModelState.FAILED:
            raise ModelNotReady(self.error_key, detail=self.error_detail)
        return self._pipe

    @property
    def model_name(self) -> str:
        """The model's name, as far as it is known yet."""
        if self.choice is not None:
            return self.choice.name
        return self.requested_model or "…"

    def _resolve(self) -> None:
        import torch

        self._torch = torch
        cuda = torch.cuda.is_available()
        self.device = torch.device("cuda" if cuda else "cpu")
        self.dtype_name = choose_dtype(self.requested_dtype, self.device.type)
        self.choice = choose_model(self.requested_model, cuda)
        if self.choice.auto_tiny:
            log.warning(
                "no CUDA GPU found: starting on the tiny test model (random weights, draws noise). "
                "Pass --model %s to force the real one.",
                DEFAULT_MODEL,
            )

    def _load(self) -> None:
        started = time.perf_counter()
        try:
            self._resolve()
            self._pipe = self.load_pipeline()
            self.load_seconds = time.perf_counter() - started
            log.info(
                "model %s ready on %s (%s) in %.1f s",
                self.choice.name,
                self.device,
                self.dtype_name,
                self.load_seconds,
            )
            self.state = ModelState.READY
        except BaseException as exc:  # noqa: BLE001 - any failure is reported, and the server stays up
            self.error_key = failure_key(exc, self.model_name)
            self.error_detail = f"{type(exc).__name__}: {str(exc)[:300]}"
            log.error("loading model %s failed (%s): %s", self.model_name, self.error_key, self.error_detail)
            self.state = ModelState.FAILED
        finally:
            self._done.set()

    def load_pipeline(self) -> Any:
        import diffusers

        torch = self._torch
        build = TINY_BUILDERS.get(self.choice.name)
        path = str(build(self.cache_dir)) if build is not None else self.choice.name
        # The pipeline class comes from the folder's model_index.json, through the capability table.
        self.family = family_of_model(path)
        problem = self.family.dtype_problem(self.dtype_name)
        if problem:
            detail = f"--dtype {self.dtype_name}: {problem}"
            raise ModelNotReady("load.failed", detail, detail=detail)
        if self.fast.cache_threshold > 0 and not self.family.first_block_cache:
            detail = f"--cache: diffusers' first-block cache does not support {self.family.display_name}"
            raise ModelNotReady("load.unsupported_option", detail, detail=detail)
        log.info(
            "loading %s model %s (%s) on %s", self.family.display_name, self.choice.name, self.dtype_name, self.device
        )
        # Always pass the dtype: without it the text encoder keeps bfloat16 while the rest is float32.
        pipeline_class = getattr(diffusers, self.family.pipeline_class)
        pipe = pipeline_class.from_pretrained(path, dtype=getattr(torch, self.dtype_name))
        pipe.set_progress_bar_config(disable=True)
        prepare_pipeline(pipe, self.device, self.fast)
        if self.warmup:
            warm_started = time.perf_counter()
            pipe(
                "warm-up",
                width=512,
                height=512,
                num_inference_steps=2,
                guidance_scale=1.0,
                generator=torch.Generator("cpu").manual_seed(0),
            )
            log.info("warm-up generation took %.1f s", time.perf_counter() - warm_started)
        return pipe
