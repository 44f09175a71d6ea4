"""ONE pipeline call for one request: seed, progress, stop, clean-up on every exit path, out of memory.

Every backend (the local device pool, a Ray Serve replica) and the warm-up go through :func:`run_pipeline`, so
what a call leaves behind is decided in one place. Whatever way a call ends (finished, stopped by the visitor,
cancelled by an API client, the visitor gone, a failure, out of memory) its ``finally`` runs the pipeline's own
clean-up, ``pipe.maybe_free_model_hooks()``: it resets every stateful diffusers hook (the first-block cache keeps
the last step's residuals, which would draw the next picture wrong or fail on its shape) and re-applies model
CPU offload, which moves every model back to the CPU (otherwise a stopped call leaves the transformer on the GPU
and the next text encoding loads the text encoder beside it). Out of memory is answered after the ``except``
block, when the failed call's frames (and the tensors they hold) are gone: then ``gc.collect()`` and
``torch.cuda.empty_cache()`` can give the memory back.

How a job stops: by raising :class:`~glmimage.errors.GenerationStopped` from ``callback_on_step_end``, the
clean-up in ``finally``. diffusers' own ``pipe._interrupt = True`` was measured against it: the CogView4 loop then
``continue``s through the remaining steps and still decodes the latents with the VAE before its own clean-up, so
the device stays busy for a whole decode of a picture nobody will see (tiny model on the CPU, 20 steps stopped
after 2: 1.8 s at 512², 4.6 s at 1024² from the stop to the return, against under 1 ms by raising; on a GPU the
full-size VAE decode at 1024² — ``benchmarks/gpu_benchmark.py --correctness`` measures both). Raising frees the
device right after the step in which the stop was seen, and the clean-up is the one diffusers runs itself.

A model family plugs in with a small :data:`PipelineCall` that makes its pipeline's call for a :class:`Job`
(:func:`call_cogview4`; GLM-Image's, which plans before it denoises, is ``glm_image.call_glm_image``); the seed,
the stop, the failure handling and the clean-up stay here, the same for every family.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import EngineError, GenerationStopped

log = logging.getLogger("glmimage.run")

StepCallback = Callable[[int, int], None]  # (steps done, total steps)
PhaseCallback = Callable[[str], None]  # a family's phase, e.g. GLM-Image's "planning" before its steps
StopCheck = Callable[[], bool]
StepEnd = Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]]  # diffusers' callback_on_step_end


@dataclass(frozen=True)
class Job:
    """What one pipeline call draws, after styles and seed are settled (no UI or API names here)."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    num_images: int
    steps: int
    guidance_scale: float
    seed: int
    images: tuple[Any, ...] = ()  # reference pictures (PIL, RGB, metadata stripped) of an edit


class PipelineCall(Protocol):
    """A family's call of its pipeline for ``job``: returns the images; passes ``step_end`` to the pipeline as
    ``callback_on_step_end``; may report phases and ask ``should_stop`` between them (raising GenerationStopped)."""

    def __call__(
        self, pipe: Any, job: Job, *, step_end: StepEnd, on_phase: PhaseCallback | None, should_stop: StopCheck | None
    ) -> list[Any]: ...


def cogview4_arguments(pipe: Any, job: Job) -> dict[str, Any]:
    """``CogView4Pipeline.__call__`` arguments for ``job``. The generator is on the CPU, so a seed gives the same
    picture on any device."""
    import torch

    return {
        "prompt": job.prompt,
        "negative_prompt": job.negative_prompt or None,
        "num_images_per_prompt": job.num_images,
        "width": job.width,
        "height": job.height,
        "num_inference_steps": job.steps,
        "guidance_scale": job.guidance_scale,
        "generator": torch.Generator("cpu").manual_seed(job.seed),
    }


def call_cogview4(
    pipe: Any, job: Job, *, step_end: StepEnd, on_phase: PhaseCallback | None, should_stop: StopCheck | None
) -> list[Any]:
    """CogView4: one call, text to image; every step ends in ``step_end``."""
    return list(pipe(**cogview4_arguments(pipe, job), callback_on_step_end=step_end).images)


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def run_pipeline(
    pipe: Any,
    job: Job,
    *,
    call: PipelineCall = call_cogview4,
    on_step: StepCallback | None = None,
    on_phase: PhaseCallback | None = None,
    should_stop: StopCheck | None = None,
) -> list[Any]:
    """Run ``pipe`` once for ``job`` and return its images (PIL).

    ``call`` is the family's (:func:`call_cogview4` by default). ``on_step(done, total)`` after every step;
    ``on_phase(name)`` when a family reports a phase; ``should_stop()`` is asked after every step but the last
    (the finished images of a one-step job are kept), and a True ends the call there with
    :class:`GenerationStopped`.
    Out of memory raises ``EngineError("error.oom")``, any other failure ``EngineError("error.generation_failed")``
    (traceback in the log, without the prompt).
    """
    total = job.steps

    def step_end(_pipe: Any, step: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        done = step + 1
        if on_step is not None:
            on_step(done, total)
        if should_stop is not None and done < total and should_stop():
            raise GenerationStopped(done, total)
        return tensors

    out_of_memory = False
    try:
        images = call(pipe, job, step_end=step_end, on_phase=on_phase, should_stop=should_stop)
    except GenerationStopped:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes a clear message; the server goes on
        if not is_out_of_memory(exc):
            log.exception("generation failed at %dx%d, %d step(s)", job.width, job.height, total)
            raise EngineError("error.generation_failed") from None
        out_of_memory = True
    finally:
        _clean_up(pipe)
    # Only here, outside the except block: until the exception is gone its traceback keeps the failed call's
    # frames, and the tensors they hold, alive (PyTorch FAQ); gc for tensors caught in reference cycles.
    if out_of_memory:
        _free_device_memory()
        log.warning("out of memory at %dx%d, %d image(s)", job.width, job.height, job.num_images)
        raise EngineError("error.oom")
    return images


def _clean_up(pipe: Any) -> None:
    """What diffusers runs at the end of a finished call, on every other exit too: reset stateful hooks (cache),
    re-apply model offload (models back to the CPU). After a finished call it ran already; again is harmless."""
    try:
        pipe.maybe_free_model_hooks()
    except Exception:  # noqa: BLE001 - replaces whatever ended the call: the pipeline may be in a bad state
        log.exception("clean-up after a generation failed")
        raise EngineError("error.generation_failed") from None


def _free_device_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
