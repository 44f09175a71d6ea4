"""GLM-Image on a CUDA GPU (tiny-glm, bfloat16): what the CPU cannot show. Skipped without CUDA.

Model CPU offload (the AR model's get_image_features is not forward(), so an edit must move it to the GPU itself),
a stop in either phase under offload (every component back on the CPU, the next job unchanged), and the seeded
sampling on a CUDA generator with two jobs at once.
"""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from glmimage.models.accel import FastPaths, prepare_pipeline
from glmimage.models.glm_image import StopRequested, run_glm_image
from glmimage.models.tiny_glm import ensure_tiny_glm_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SMALL = dict(prompt="a photo of cat", width=256, height=256, num_inference_steps=3, guidance_scale=1.5)


def load(offload: bool):
    from diffusers import GlmImagePipeline

    pipe = GlmImagePipeline.from_pretrained(ensure_tiny_glm_model(), dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    prepare_pipeline(pipe, torch.device("cuda"), FastPaths(offload="model" if offload else "none"))
    return pipe


@pytest.fixture(scope="module")
def plain():
    return load(offload=False)


@pytest.fixture(scope="module")
def offloaded():
    return load(offload=True)


def first(images) -> np.ndarray:
    return np.asarray(images[0])


def pictures() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in ((640, 480), (200, 300))]


def devices_of(pipe) -> set[str]:
    return {
        next(module.parameters()).device.type for module in pipe.components.values() if hasattr(module, "parameters")
    }


def test_on_cuda_the_pixels_are_those_diffusers_draws_and_two_jobs_at_once_change_nothing(plain):
    alone = {seed: first(run_glm_image(plain, seed=seed, **SMALL)) for seed in (1, 2)}
    upstream = plain(generator=torch.Generator().manual_seed(1), **SMALL).images
    assert np.array_equal(first(upstream), alone[1])
    other = type(plain)(**dict(plain.components, scheduler=copy.deepcopy(plain.scheduler)))
    other.set_progress_bar_config(disable=True)
    results = {}
    threads = [
        threading.Thread(target=lambda p=p, s=s: results.__setitem__(s, first(run_glm_image(p, seed=s, **SMALL))))
        for p, s in ((plain, 1), (other, 2))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert np.array_equal(results[1], alone[1]) and np.array_equal(results[2], alone[2])


def test_with_model_offload_text_to_image_and_an_edit_draw_what_the_plain_pipeline_draws(plain, offloaded):
    assert np.array_equal(
        first(run_glm_image(offloaded, seed=1, **SMALL)), first(run_glm_image(plain, seed=1, **SMALL))
    )
    edit = dict(SMALL, images=pictures(), seed=3)
    assert np.array_equal(first(run_glm_image(offloaded, **edit)), first(run_glm_image(plain, **edit)))
    assert devices_of(offloaded) == {"cpu"}


def test_with_model_offload_a_stop_in_either_phase_puts_every_component_back_on_the_cpu(offloaded):
    before = first(run_glm_image(offloaded, seed=1, **SMALL))
    passes = []
    handle = offloaded.vision_language_encoder.register_forward_pre_hook(lambda *_: passes.append(1))
    try:
        with pytest.raises(StopRequested):
            run_glm_image(offloaded, seed=1, should_stop=lambda: len(passes) >= 5, **SMALL)
    finally:
        handle.remove()
    assert devices_of(offloaded) == {"cpu"}
    steps = []
    with pytest.raises(StopRequested):
        run_glm_image(
            offloaded, seed=1, on_step=lambda i, n: steps.append(i), should_stop=lambda: bool(steps), **SMALL
        )
    assert devices_of(offloaded) == {"cpu"}
    assert np.array_equal(first(run_glm_image(offloaded, seed=1, **SMALL)), before)
