"""glmimage.models.run: one pipeline call, on the real tiny CogView4 pipeline with the real diffusers hooks.

Every way a call can end (finished, stopped, failed, out of memory) leaves the pipeline as a fresh one: the next
call, at the same or another size, draws exactly the pixels a freshly loaded pipeline draws. The faults are raised
INSIDE the real pipeline call, from a forward hook on a real transformer block. What cannot run on a CPU is named
where it is stood in for: an out-of-memory error is a real ``torch.OutOfMemoryError`` raised by that hook (no GPU
to exhaust), and model offload runs with real accelerate hooks whose device is the CPU (moves are no-ops).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import CogView4Pipeline
from inject import raising_in_transformer

from glmimage.errors import EngineError, GenerationStopped
from glmimage.models.accel import FastPaths, prepare_pipeline
from glmimage.models.run import Job, run_pipeline

CPU = torch.device("cpu")
# 0.3: high enough that the first-block cache really skips steps on the tiny model's random weights, so stale
# cache state shows up as different pixels (at the default 0.12 it shows up only as a shape error at a new size).
CACHE = FastPaths(cache_threshold=0.3)
PLAIN = FastPaths()
STEPS = 6


FAILURES = {
    "failed": lambda: RuntimeError("boom in a kernel"),
    "out of memory": lambda: torch.OutOfMemoryError("CUDA out of memory"),  # no GPU here to exhaust
}


def job(width: int = 512, height: int = 512, prompt: str = "a cat", steps: int = STEPS) -> Job:
    return Job(prompt, "", width, height, 1, steps, 3.5, 1234)


@pytest.fixture(scope="module")
def fresh(tiny_model_path) -> Callable[[FastPaths], CogView4Pipeline]:
    def make(fast: FastPaths = PLAIN) -> CogView4Pipeline:
        pipe = CogView4Pipeline.from_pretrained(tiny_model_path, dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        prepare_pipeline(pipe, CPU, fast)
        return pipe

    return make


@pytest.fixture(scope="module")
def expected(fresh) -> Callable[[FastPaths, Job], np.ndarray]:
    """The pixels a freshly loaded pipeline draws for a job (each computed once)."""
    drawn: dict[tuple[FastPaths, Job], np.ndarray] = {}

    def pixels_of(fast: FastPaths, the_job: Job) -> np.ndarray:
        if (fast, the_job) not in drawn:
            drawn[fast, the_job] = pixels(run_pipeline(fresh(fast), the_job))
        return drawn[fast, the_job]

    return pixels_of


def pixels(images: list[Any]) -> np.ndarray:
    return np.asarray(images[0].convert("RGB"))


def stopped_at(pipe: CogView4Pipeline, step: int, the_job: Job) -> GenerationStopped:
    """Run ``the_job`` and stop it after ``step`` steps, as the Stop button does."""
    seen = [0]
    with pytest.raises(GenerationStopped) as caught:
        run_pipeline(
            pipe, the_job, on_step=lambda done, _total: seen.__setitem__(0, done), should_stop=lambda: seen[0] >= step
        )
    return caught.value


# ---- stop -------------------------------------------------------------------------------------------------------


def test_with_cache_a_stop_then_another_size_draws_what_a_fresh_pipeline_draws(fresh, expected):
    # Before run.py, a stop left the first-block cache's residuals behind: "The size of tensor a (1536) must
    # match the size of tensor b (1024)" at the next size.
    pipe = fresh(CACHE)
    assert stopped_at(pipe, 2, job()).params == {"step": 2, "total": STEPS}
    assert np.array_equal(pixels(run_pipeline(pipe, job(768, 512))), expected(CACHE, job(768, 512)))


def test_with_cache_a_stop_then_the_same_request_draws_identical_pixels(fresh, expected):
    # Before run.py the stale cache made step 0 of the next job a cache hit: a different picture, silently.
    pipe = fresh(CACHE)
    stopped_at(pipe, 2, job())
    assert np.array_equal(pixels(run_pipeline(pipe, job())), expected(CACHE, job()))


def test_a_stop_ends_the_call_after_the_step_and_skips_the_vae_decode(fresh):
    pipe = fresh()
    decodes = []
    decode = pipe.vae.decode
    pipe.vae.decode = lambda *a, **k: decodes.append(1) or decode(*a, **k)
    steps: list[int] = []
    with pytest.raises(GenerationStopped):
        run_pipeline(pipe, job(), on_step=lambda done, _: steps.append(done), should_stop=lambda: bool(steps))
    assert steps == [1] and decodes == []


def test_a_stop_seen_after_the_last_step_keeps_the_finished_images(fresh, expected):
    images = run_pipeline(fresh(), job(steps=1), should_stop=lambda: True)
    assert np.array_equal(pixels(images), expected(PLAIN, job(steps=1)))


# ---- faults inside the call ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fast", [PLAIN, CACHE], ids=["plain", "cache"])
def test_a_failure_inside_the_transformer_at_step_2_then_the_next_jobs_draw_what_a_fresh_pipeline_draws(
    fresh, expected, fast
):
    pipe = fresh(fast)
    with raising_in_transformer(pipe, FAILURES["failed"], at_call=3), pytest.raises(EngineError) as caught:
        run_pipeline(pipe, job())
    assert caught.value.key == "error.generation_failed"
    assert np.array_equal(pixels(run_pipeline(pipe, job())), expected(fast, job()))
    assert np.array_equal(pixels(run_pipeline(pipe, job(768, 512))), expected(fast, job(768, 512)))


def test_out_of_memory_inside_the_transformer_empties_the_cache_once_the_frames_are_gone_and_the_next_job_is_fresh(
    fresh, expected, monkeypatch
):
    pipe = fresh(CACHE)
    emptied: list[bool] = []

    with raising_in_transformer(pipe, FAILURES["out of memory"], at_call=3) as state:
        # torch.cuda is faked only around the failing call: the cache can give memory back only once nothing
        # holds the failed call's tensors, so empty_cache must come after the except block.
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(state["activations"]() is None))
        with pytest.raises(EngineError) as caught:
            run_pipeline(pipe, job())
        monkeypatch.undo()
    assert caught.value.key == "error.oom"
    assert emptied == [True]
    assert np.array_equal(pixels(run_pipeline(pipe, job(768, 512))), expected(CACHE, job(768, 512)))


# ---- the clean-up --------------------------------------------------------------------------------------------


def _count_clean_ups(pipe: CogView4Pipeline) -> list[int]:
    """Wrap the real ``maybe_free_model_hooks``; each call records how many transformer calls had run."""
    calls: list[int] = []
    passes = [0]
    pipe.transformer.register_forward_pre_hook(lambda *_: passes.__setitem__(0, passes[0] + 1))
    real = pipe.maybe_free_model_hooks

    def counted() -> None:
        calls.append(passes[0])
        real()

    pipe.maybe_free_model_hooks = counted
    return calls


@pytest.mark.parametrize("ending", ["finished", "stopped", "failed", "out of memory"])
def test_the_pipelines_clean_up_runs_on_every_exit_path(fresh, ending):
    pipe = fresh(CACHE)
    clean_ups = _count_clean_ups(pipe)
    if ending == "finished":
        run_pipeline(pipe, job())
        # The pipeline ran it at its end; run_pipeline's finally once more.
        assert clean_ups == [2 * STEPS, 2 * STEPS]
        return
    if ending == "stopped":
        stopped_at(pipe, 2, job())
    else:
        failure = FAILURES[ending]
        with raising_in_transformer(pipe, failure, at_call=3), pytest.raises(EngineError):
            run_pipeline(pipe, job())
    assert len(clean_ups) == 1  # the pipeline's own never ran: ours did, after the call ended
    assert clean_ups[0] in (3, 4)


def test_after_a_stop_model_offload_is_applied_again_and_the_next_job_is_fresh(fresh, expected):
    # Real accelerate offload hooks, with the CPU standing in for the GPU (enable_model_cpu_offload refuses no
    # device given explicitly; the moves between "GPU" and CPU are no-ops here). What is checked: the hook chain
    # that puts every model back on the CPU is rebuilt after a stop, as after a finished call.
    pipe = fresh()
    pipe.enable_model_cpu_offload(device=CPU)
    hooks_before = list(pipe._all_hooks)
    stopped_at(pipe, 2, job())
    assert len(pipe._all_hooks) == len(hooks_before) == 3
    assert all(new is not old for new, old in zip(pipe._all_hooks, hooks_before, strict=True))
    assert np.array_equal(pixels(run_pipeline(pipe, job())), expected(PLAIN, job()))
