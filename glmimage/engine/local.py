"""The local engine: generations on this machine's pipeline.

:class:`LocalEngine` runs the cached pipeline on long-lived worker threads (torch's CPU thread pool slows down
when the calling thread changes, and Gradio alternates its threads), reports each step, stops between steps when
asked, and turns every failure into an :class:`EngineError` whose key the UI words for the visitor.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import copy
import gc
import logging
import threading
import time
from typing import Any

from ..errors import EngineError, ModelNotReady
from ..models.accel import bucketed_prompt_embeds, token_count
from ..models.loading import ModelState, PipelineLoader
from ..requests import GenerationRequest, check_prompt_tokens
from ..styles import StyleBook, StyledPrompt
from ..zerogpu import on_zero_gpu
from .base import GenerationResult, GenerationStopped, StepCallback, StopCheck, Timings, is_out_of_memory, pick_seed

log = logging.getLogger("glmimage.engine")

LOAD_TIMEOUT_S = 1800.0


class LocalEngine:
    """Runs generations on this machine's pipeline, ``workers`` at a time (the queue's concurrency limit)."""

    def __init__(self, loader: PipelineLoader, styles: StyleBook, workers: int = 1) -> None:
        self.loader = loader
        self.styles = styles
        self.workers = workers
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="glmimage-gpu")
        self._local = threading.local()
        # On Hugging Face ZeroGPU the pipeline call asks for a GPU for a time that fits the job; elsewhere as is.
        self._generate = on_zero_gpu(self.generate)

    def submit(
        self, request: GenerationRequest, on_step: StepCallback | None = None, should_stop: StopCheck | None = None
    ) -> concurrent.futures.Future[GenerationResult]:
        # In the caller's context (Gradio's request context, which spaces.GPU reads on ZeroGPU).
        context = contextvars.copy_context()
        return self._executor.submit(context.run, self._generate, request, on_step, should_stop)

    def count_tokens(self, text: str) -> int | None:
        """Token count of ``text`` as the pipeline reads it, or None while the model is not loaded."""
        if self.loader.state is not ModelState.READY:
            return None
        return token_count(self.loader.wait(0).tokenizer, text)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _pipeline(self) -> tuple[Any, float]:
        """This worker's pipeline. With several workers each gets its own pipeline object and scheduler (both
        keep per-call state) over the same shared weights; one worker uses the loaded object itself."""
        started = time.perf_counter()
        shared = self.loader.wait(LOAD_TIMEOUT_S)
        waited = time.perf_counter() - started
        if self.workers == 1:
            return shared, waited
        own = getattr(self._local, "pipe", None)
        if own is None:
            components = dict(shared.components, scheduler=copy.deepcopy(shared.scheduler))
            own = type(shared)(**components)
            own.set_progress_bar_config(disable=True)
            self._local.pipe = own
        return own, waited

    def _prompt_arguments(self, pipe: Any, final: StyledPrompt, num_images: int) -> dict[str, Any]:
        """The prompts as text, or, with --compile, as embeddings padded to a fixed bucket of lengths so the
        compiled transformer sees a handful of shapes instead of one per prompt length."""
        if not self.loader.fast.compile:
            return {
                "prompt": final.prompt,
                "negative_prompt": final.negative_prompt or None,
                "num_images_per_prompt": num_images,
            }
        device, dtype = pipe._execution_device, pipe.transformer.dtype
        # One row per image for both (the pipeline repeats prompt_embeds per image but not negative_prompt_embeds,
        # and wants equal batches); the latents come out the same as with num_images_per_prompt.
        return {
            "prompt_embeds": bucketed_prompt_embeds(pipe, [final.prompt], device, dtype).repeat(num_images, 1, 1),
            "negative_prompt_embeds": bucketed_prompt_embeds(pipe, [final.negative_prompt], device, dtype).repeat(
                num_images, 1, 1
            ),
            "num_images_per_prompt": 1,
        }

    def generate(
        self, request: GenerationRequest, on_step: StepCallback | None = None, should_stop: StopCheck | None = None
    ) -> GenerationResult:
        """Run one request to the end (or to a stop); always on a worker thread of this engine."""
        import torch

        try:
            pipe, load_wait = self._pipeline()
        except ModelNotReady as exc:
            raise EngineError(exc.key, detail=exc.detail) from None
        final = self.styles.apply(request.style, request.prompt, request.negative_prompt)
        check_prompt_tokens(final.prompt, final.negative_prompt, self.count_tokens)
        seed = pick_seed(request)
        total = request.num_inference_steps

        def step_end(_pipe: Any, step: int, _timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            if on_step is not None:
                on_step(step + 1, total)
            if should_stop is not None and should_stop() and step + 1 < total:
                raise GenerationStopped(step + 1, total)
            return kwargs

        started = time.perf_counter()
        try:
            output = pipe(
                **self._prompt_arguments(pipe, final, request.num_images),
                width=request.width,
                height=request.height,
                num_inference_steps=total,
                guidance_scale=request.guidance_scale,
                generator=torch.Generator("cpu").manual_seed(seed),
                callback_on_step_end=step_end,
            )
        except GenerationStopped:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes a clear message; the server goes on
            if not is_out_of_memory(exc):
                log.exception("generation failed at %dx%d, %d step(s)", request.width, request.height, total)
                raise EngineError("error.generation_failed") from None
            output = None
        if output is None:
            # Out of memory. Emptied only here, outside the except block: until the exception is gone its
            # traceback keeps the failed call's frames, and the tensors they hold, alive (PyTorch FAQ); gc for
            # tensors caught in reference cycles.
            if torch.cuda.is_available():
                gc.collect()
                torch.cuda.empty_cache()
            log.warning("out of memory at %dx%d, %d image(s)", request.width, request.height, request.num_images)
            raise EngineError("error.oom")
        model_s = time.perf_counter() - started
        timings = Timings(load_wait_s=load_wait, model_s=model_s, per_step_s=model_s / total, steps=total)
        return GenerationResult(request=request, seed=seed, final=final, images=list(output.images), timings=timings)
