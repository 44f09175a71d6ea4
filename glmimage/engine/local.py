"""The local engine: generations on this machine's pool of pipelines (``--devices``, ``--concurrency``).

:class:`LocalEngine` only schedules: a job takes a free worker (one pipeline on one device, see
``glmimage.models.loading.Worker``), runs there through ``glmimage.models.run.run_pipeline`` (the one owner of a
pipeline call: seed, progress, stop, clean-up, out of memory) and hands the worker back. Jobs run on long-lived
threads, one per worker (torch's CPU thread pool slows down when the calling thread changes, and Gradio
alternates its threads).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextvars
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import EngineError, GenerationStopped, ModelNotReady
from ..models.accel import token_count
from ..models.families import COGVIEW4
from ..models.loading import ModelState, PipelineLoader, Worker
from ..models.run import Job, run_pipeline
from ..requests import GenerationRequest, check_prompt_tokens
from ..styles import StyleBook
from ..zerogpu import on_zero_gpu
from .base import GenerationResult, PhaseCallback, StepCallback, StopCheck, Timings, pick_seed

LOAD_TIMEOUT_S = 1800.0
RECENT_JOBS = 100


@dataclass
class JobRecord:
    """What became of one job (kept for the last ``RECENT_JOBS``): where it ran, how far it got, when."""

    worker: str
    total: int
    started: float  # time.monotonic()
    steps_done: int = 0
    ended: float | None = None
    outcome: str = "running"  # then "finished", "stopped", "oom", "failed"


class LocalEngine:
    """Runs generations on the loader's workers, one job per worker at a time.

    ``workers``, when given, must be the loader's pool size (the server passes ``Settings.workers``)."""

    def __init__(self, loader: PipelineLoader, styles: StyleBook, workers: int | None = None) -> None:
        if workers is not None and workers != loader.worker_count:
            raise ValueError(f"the engine expects {workers} workers, but the loader builds {loader.worker_count}")
        self.loader = loader
        self.styles = styles
        self.workers = loader.worker_count
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix="glmimage-gpu"
        )
        self._free: queue.Queue[Worker] = queue.Queue()
        self._filled = False
        self._fill_lock = threading.Lock()
        self._token_lock = threading.Lock()  # a Rust tokenizer refuses use from two threads at once
        self.recent: collections.deque[JobRecord] = collections.deque(maxlen=RECENT_JOBS)
        # On Hugging Face ZeroGPU the pipeline call asks for a GPU for a time that fits the job; elsewhere as is.
        self._generate = on_zero_gpu(self.generate)

    def submit(
        self,
        request: GenerationRequest,
        on_step: StepCallback | None = None,
        should_stop: StopCheck | None = None,
        on_phase: PhaseCallback | None = None,
        *,
        pictures: Sequence[Any] = (),
    ) -> concurrent.futures.Future[GenerationResult]:
        """``pictures``: an edit's reference pictures in memory (a Ray replica gets them with the job), used instead
        of reading ``request.images`` from this machine's disk."""
        # In the caller's context (Gradio's request context, which spaces.GPU reads on ZeroGPU).
        context = contextvars.copy_context()
        extra = {"pictures": pictures} if pictures else {}
        return self._executor.submit(context.run, self._generate, request, on_step, should_stop, on_phase, **extra)

    def count_tokens(self, text: str) -> int | None:
        """Token count of ``text`` as the pipeline reads it, or None while the model is not loaded."""
        if self.loader.state is not ModelState.READY:
            return None
        with self._token_lock:
            return token_count(self.loader.tokenizer, text)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _take_worker(self) -> tuple[Worker, float]:
        """A free worker (waiting for the model, then for a worker), and the seconds spent waiting for the model."""
        started = time.perf_counter()
        pool = self.loader.pool(LOAD_TIMEOUT_S)
        waited = time.perf_counter() - started
        with self._fill_lock:
            if not self._filled:
                for worker in pool:
                    self._free.put(worker)
                self._filled = True
        return self._free.get(), waited

    def generate(
        self,
        request: GenerationRequest,
        on_step: StepCallback | None = None,
        should_stop: StopCheck | None = None,
        on_phase: PhaseCallback | None = None,
        *,
        pictures: Sequence[Any] = (),
    ) -> GenerationResult:
        """Run one request to the end (or to a stop) on a free worker; on a thread of this engine when submitted."""
        try:
            worker, load_wait = self._take_worker()
        except ModelNotReady as exc:
            raise EngineError(exc.key, detail=exc.detail) from None
        try:
            return self._run(worker, load_wait, request, on_step, should_stop, on_phase, pictures)
        finally:
            self._free.put(worker)

    def _run(
        self,
        worker: Worker,
        load_wait: float,
        request: GenerationRequest,
        on_step: StepCallback | None,
        should_stop: StopCheck | None,
        on_phase: PhaseCallback | None = None,
        pictures: Sequence[Any] = (),
    ) -> GenerationResult:
        family = self.loader.family or COGVIEW4
        final = self.styles.apply(
            request.style, request.prompt, request.negative_prompt, takes_negative=family.negative_prompt
        )
        check_prompt_tokens(
            final.prompt, final.negative_prompt, lambda text: token_count(worker.pipe.tokenizer, text), family
        )
        seed = pick_seed(request)
        job = Job(
            prompt=final.prompt,
            negative_prompt=final.negative_prompt,
            width=request.width,
            height=request.height,
            num_images=request.num_images,
            steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale,
            seed=seed,
            images=tuple(pictures) or tuple(_open_picture(path) for path in request.images),
        )
        record = JobRecord(worker=worker.name, total=job.steps, started=time.monotonic())
        self.recent.append(record)

        def step_done(done: int, total: int) -> None:
            record.steps_done = done
            if on_step is not None:
                on_step(done, total)

        started = time.perf_counter()
        try:
            images = run_pipeline(
                worker.pipe, job, call=worker.call, on_step=step_done, on_phase=on_phase, should_stop=should_stop
            )
            record.outcome = "finished"
        except GenerationStopped:
            record.outcome = "stopped"
            raise
        except EngineError as exc:
            record.outcome = "oom" if exc.key == "error.oom" else "failed"
            raise
        finally:
            record.ended = time.monotonic()
        model_s = time.perf_counter() - started
        timings = Timings(load_wait_s=load_wait, model_s=model_s, per_step_s=model_s / job.steps, steps=job.steps)
        return GenerationResult(
            request=request, seed=seed, final=final, images=images, timings=timings, worker=worker.name
        )


def _open_picture(path: str) -> Any:
    """A reference picture of an edit, as the intake stored it (RGB PNG, metadata stripped), read at job start."""
    from PIL import Image

    with Image.open(path) as picture:
        return picture.convert("RGB")
