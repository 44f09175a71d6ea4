"""The one place that loads the pipeline (CogView4 or GLM-Image, as the model folder says): once, in the
background, shared by every session.

The page comes up at once; the model loads on its own thread and reports its state (loading / warming up /
ready / failed with the reason). The weights are read from disk once, then every ``--devices`` entry (times
``--concurrency``) gets a pipeline of its own: a :class:`Worker`. A generation asked for before the model is
ready waits. A failed load leaves the server up and says what to do.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import EngineError, ModelNotReady
from ..limits import DEFAULT_MODEL
from .accel import FastPaths, pipelines_for
from .families import COGVIEW4, GLM_IMAGE, Family, family_of_model
from .glm_image import call_glm_image
from .run import Job, PipelineCall, call_cogview4, run_pipeline
from .tiny import TINY_MODEL_NAME, ensure_tiny_model
from .tiny_glm import TINY_GLM_MODEL_NAME, ensure_tiny_glm_model

# Test models built offline into --cache-dir on first use, by name, and the family each one is.
TINY_BUILDERS = {TINY_MODEL_NAME: ensure_tiny_model, TINY_GLM_MODEL_NAME: ensure_tiny_glm_model}
TINY_FAMILIES = {TINY_MODEL_NAME: COGVIEW4, TINY_GLM_MODEL_NAME: GLM_IMAGE}
# One from_pretrained (or tiny build) at a time in a process: from_pretrained builds each model under
# accelerate's init_empty_weights, which patches torch's Module class process-wide, so a second load on another
# thread got meta tensors it could not move ("Cannot copy out of meta tensor"). One server loads one model;
# tests and benchmarks start several.
_READING_WEIGHTS = threading.Lock()
# Each family's pipeline call (glmimage.models.run.PipelineCall), by the family's key.
PIPELINE_CALLS: dict[str, PipelineCall] = {COGVIEW4.key: call_cogview4, GLM_IMAGE.key: call_glm_image}

log = logging.getLogger("glmimage.loading")


class ModelState(enum.StrEnum):
    LOADING = "loading"
    WARMING = "warming"  # loaded; the warm-up generation (with --compile: the compilation) is running
    READY = "ready"
    FAILED = "failed"


class DeviceUnavailable(ValueError):
    """A ``--devices`` entry this machine does not have."""


@dataclass
class Worker:
    """One pipeline of the pool: the device it runs on and the name results carry (``"worker"``)."""

    name: str
    device: Any  # torch.device
    pipe: Any
    call: PipelineCall = call_cogview4  # the family's pipeline call, for glmimage.models.run.run_pipeline


def worker_names(devices: Sequence[str]) -> list[str]:
    """Distinct names for the pool's pipelines: a CUDA device listed once keeps its name ("cuda:1"), one listed
    several times gets "#k" ("cuda:0#0", "cuda:0#1"); CPU pipelines are numbered in order ("cpu:0", "cpu:1")."""
    names = []
    cpu = 0
    for index, device in enumerate(devices):
        if device.startswith("cpu"):
            names.append(f"cpu:{cpu}")
            cpu += 1
        elif devices.count(device) == 1:
            names.append(device)
        else:
            names.append(f"{device}#{devices[:index].count(device)}")
    return names


def warmup_jobs(fast: FastPaths, family: Family = COGVIEW4) -> list[Job]:
    """The warm-up generations. With ``--compile``, the family's default request (its default size and guidance,
    so the classifier-free-guidance step path, one image) and a batch of two: the two graphs every later request
    reuses, so the first visitor pays no compilation. Without it, one small job on the same step path."""
    guidance, small = family.default_guidance, family.sizes.min_side
    if not fast.compile:
        return [Job("warm-up", "", small, small, 1, 2, guidance, 0)]
    width, height = family.default_size
    return [Job("warm-up", "", width, height, 1, 2, guidance, 0), Job("warm-up", "", small, small, 2, 2, guidance, 0)]


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
    if isinstance(exc, ModelNotReady):  # already worded (e.g. a model of a family GLM Image does not run)
        return exc.key
    if isinstance(exc, DeviceUnavailable):
        return "load.bad_device"
    if isinstance(exc, EngineError) and exc.key == "error.oom":  # the warm-up ran out of memory
        return "load.oom"
    text = f"{type(exc).__name__}: {exc}"
    if "OutOfMemory" in text or "out of memory" in text.lower():
        return "load.oom"
    if model in TINY_BUILDERS:  # built here, neither a path nor a hub id: the detail says what failed
        return "load.failed"
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


def resolve_devices(entries: Sequence[str], concurrency: int) -> list[Any]:
    """The pool's devices: each ``--devices`` entry (default: the first CUDA device, else the CPU), ``concurrency``
    times, interleaved (cuda:0, cuda:1, cuda:0, cuda:1) so that jobs spread over the devices first."""
    import torch

    entries = list(entries) or ["cuda:0" if torch.cuda.is_available() else "cpu"]
    for entry in entries:
        if entry.startswith("cuda"):
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if torch.device(entry).index >= count:
                raise DeviceUnavailable(f"--devices names {entry}, but this machine has {count} CUDA device(s)")
    return [torch.device(entry) for _ in range(concurrency) for entry in entries]


class PipelineLoader:
    """Loads the pipeline once on a background thread; ``wait()`` hands the same object to every caller and
    ``pool()`` the workers (one pipeline per device entry)."""

    def __init__(
        self,
        model: str | None,
        dtype: str = "auto",
        fast: FastPaths | None = None,
        *,
        warmup: bool = True,
        cache_dir: str | None = None,
        devices: Sequence[str] = (),
        concurrency: int = 1,
        expected_family: Family | None = None,
    ) -> None:
        self.requested_model = model
        self.requested_dtype = dtype
        self.requested_devices = list(devices)
        self.concurrency = concurrency
        # Known once the loading thread has imported torch (so the page does not wait for that import).
        self.device: Any = None  # torch.device of the first worker
        self.devices: list[Any] = []
        self.workers: list[Worker] = []
        self.tokenizer: Any = None  # for counting tokens outside the workers
        self.choice: ModelChoice | None = None
        self.dtype_name: str | None = None
        # The model's row of the capability table, known once its model_index.json has been read; the page was
        # built for ``expected_family`` (see families.expected_family), and a model of another family is refused.
        self.family: Family | None = None
        self.expected_family = expected_family
        self.fast = fast or FastPaths()
        self.warmup = warmup
        self.cache_dir = cache_dir
        self.state = ModelState.LOADING
        self.error_key = ""
        self.error_detail = ""
        self.load_seconds: float | None = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> PipelineLoader:
        """Start loading in the background (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._load, name="glmimage-loader", daemon=True)
            self._thread.start()
        return self

    @property
    def worker_count(self) -> int:
        """How many pipelines the pool will have, known before loading (the queue's concurrency limit)."""
        return max(1, len(self.requested_devices)) * self.concurrency

    def pool(self, timeout: float | None = None) -> list[Worker]:
        """The workers, once loaded and warmed up; raises :class:`ModelNotReady` if loading failed or took longer
        than ``timeout``."""
        if not self._done.wait(timeout):
            raise ModelNotReady("load.timeout")
        if self.state is ModelState.FAILED:
            raise ModelNotReady(self.error_key, f"{self.error_key}: {self.error_detail}", detail=self.error_detail)
        return self.workers

    def wait(self, timeout: float | None = None) -> Any:
        """The first worker's pipeline (see :meth:`pool`)."""
        return self.pool(timeout)[0].pipe

    @property
    def model_name(self) -> str:
        """The model's name, as far as it is known yet."""
        if self.choice is not None:
            return self.choice.name
        return self.requested_model or "…"

    def _resolve(self) -> None:
        import torch

        self._torch = torch
        self.devices = resolve_devices(self.requested_devices, self.concurrency)
        self.device = self.devices[0]
        self.dtype_name = choose_dtype(self.requested_dtype, self.device.type)
        self.choice = choose_model(self.requested_model, self.device.type == "cuda")
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
            self.workers = self.load_workers()
            if self.warmup:
                self.state = ModelState.WARMING
                self.warm_up()
            self.load_seconds = time.perf_counter() - started
            log.info(
                "model %s ready on %s (%s) in %.1f s",
                self.choice.name,
                ", ".join(worker.name for worker in self.workers),
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

    def load_workers(self) -> list[Worker]:
        """Read the weights from disk once, then build one prepared pipeline per device entry."""
        import diffusers

        torch = self._torch
        build = TINY_BUILDERS.get(self.choice.name)
        if build is not None:
            with _READING_WEIGHTS:  # building creates modules too: never while another thread reads weights
                path = str(build(self.cache_dir))
        else:
            path = self.choice.name
        # The pipeline class comes from the folder's model_index.json, through the capability table.
        self.family = family = family_of_model(path)
        if self.expected_family is not None and family.key != self.expected_family.key:  # by key: it may be a copy
            detail = (
                f"{self.choice.name} is a {family.display_name} model, but the page was built for "
                f"{self.expected_family.display_name} (a hub id not cached at start): restart the app"
            )
            raise ModelNotReady("load.failed", detail, detail=detail)
        problem = family.dtype_problem(self.dtype_name)
        if problem:
            detail = f"--dtype {self.dtype_name}: {problem}"
            raise ModelNotReady("load.failed", detail, detail=detail)
        if self.fast.cache_threshold > 0 and not family.first_block_cache:
            detail = f"--cache: diffusers' first-block cache does not support {family.display_name}"
            raise ModelNotReady("load.unsupported_option", detail, detail=detail)
        log.info(
            "loading %s model %s (%s) for %s", family.display_name, self.choice.name, self.dtype_name, self.devices
        )
        # Always pass the dtype: without it the text encoder keeps bfloat16 while the rest is float32.
        pipeline_class = getattr(diffusers, family.pipeline_class)
        with _READING_WEIGHTS:
            pipe = pipeline_class.from_pretrained(path, dtype=getattr(torch, self.dtype_name))
        self.tokenizer = pipe.tokenizer
        pipelines = pipelines_for(pipe, self.devices, self.fast, quantize=family.heavy_components)
        names = worker_names([str(device) for device in self.devices])
        call = PIPELINE_CALLS[family.key]
        return [Worker(name, device, p, call) for name, device, p in zip(names, self.devices, pipelines, strict=True)]

    def warm_up(self) -> None:
        """Run the warm-up generations on every worker, through the same call as a visitor's job."""
        for worker in self.workers:
            for job in warmup_jobs(self.fast, self.family or COGVIEW4):
                warm_started = time.perf_counter()
                run_pipeline(worker.pipe, job, call=worker.call)
                log.info(
                    "warm-up %dx%d, %d image(s) on %s took %.1f s",
                    job.width,
                    job.height,
                    job.num_images,
                    worker.name,
                    time.perf_counter() - warm_started,
                )
