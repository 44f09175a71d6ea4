"""One GLM-Image generation (diffusers' ``GlmImagePipeline``): text-to-image, or an edit from 1..N pictures.

GLM-Image draws in two phases, and :func:`run_glm_image` reports and stops both:

1. **planning**: the autoregressive model writes the image tokens (``generate_prior_tokens``). diffusers gives this
   phase no step callback, so it is reported as one phase, ``on_phase("planning")``; Stop is checked before every
   token the model writes (a forward pre-hook on the AR model) and when the phase ends.
2. **denoising**: the DiT draws from those tokens in N steps, ``on_phase("denoising")`` then ``on_step(i, N)``
   after each; Stop is checked between steps (as the CogView4 path does).

Stopping raises :class:`StopRequested`; whatever way the call ends, the pipeline's own clean-up
(``maybe_free_model_hooks``: offloaded models back to the CPU, stateful hooks reset) has run.

**Same seed, same picture.** transformers' ``generate()`` takes no generator, so the pipeline seeds torch's GLOBAL
generators (``torch.manual_seed``) and the AR model samples from the default generator of its device. Two jobs
planning at once in one process would reseed and consume each other's random stream. Here the pipeline is given no
generator for planning; instead :func:`seeded_sampling` seeds only the default generator of the device that samples,
under a lock per device, and restores its previous state afterwards. Jobs on the same device plan one after
another (they would share the device anyway); jobs on other devices, and every denoising phase (which uses its own
``torch.Generator``), run alongside. The tokens, and so the pixels, are those ``pipe(..., generator=seed)`` gives.

**Known upstream fault** (diffusers 0.42.1 + transformers 5.23): see :func:`plan_edit`, the one workaround.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..errors import GenerationStopped
from .families import GLM_IMAGE, SizeRules
from .run import Job, PhaseCallback, StepCallback, StepEnd, StopCheck, run_pipeline

if TYPE_CHECKING:
    import torch
    from diffusers import GlmImagePipeline
    from PIL import Image

PLANNING = "planning"
DENOISING = "denoising"


# A stop in either phase is the stop every job ends with ("status.stopped", 0 steps while planning).
StopRequested = GenerationStopped


_locks_guard = threading.Lock()
_sampling_locks: dict[str, threading.Lock] = {}


def _default_generator(device: torch.device) -> tuple[str, torch.Generator]:
    """The generator the AR model samples from on ``device``, and a name for it ("cpu", "cuda:1")."""
    import torch

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index}", torch.cuda.default_generators[index]
    if device.type == "cpu":
        return "cpu", torch.default_generator
    raise ValueError(f"GLM-Image runs on a CUDA device or the CPU, not {device}")


@contextmanager
def seeded_sampling(device: torch.device, seed: int) -> Iterator[None]:
    """Hold ``device``'s default generator alone, seeded with ``seed``, for the AR model's sampling.

    One job per device at a time (a lock per device); the generator's earlier state comes back afterwards, so
    nothing else in the process sees its stream moved.
    """
    import torch

    name, generator = _default_generator(torch.device(device))
    with _locks_guard:
        lock = _sampling_locks.setdefault(name, threading.Lock())
    with lock:
        state = generator.get_state()
        generator.manual_seed(seed)
        try:
            yield
        finally:
            generator.set_state(state)


@contextmanager
def _stop_between_tokens(module: torch.nn.Module, should_stop: StopCheck | None, total: int) -> Iterator[None]:
    """Check ``should_stop`` before each forward pass of ``module`` made by THIS thread (one per written token).

    The module may be shared with other workers of the same device; they wait on the same planning lock, and the
    thread check keeps this job's Stop from ever ending theirs."""
    if should_stop is None:
        yield
        return
    owner = threading.get_ident()

    def check(_module: Any, _args: Any) -> None:
        if threading.get_ident() == owner and should_stop():
            raise StopRequested(0, total)

    handle = module.register_forward_pre_hook(check)
    try:
        yield
    finally:
        handle.remove()


def reference_rules(pipe: GlmImagePipeline) -> SizeRules:
    """Picture sizes the pipeline reads as they are.

    The processor resizes a picture for the AR model (sides halved, then scaled into its pixel bounds and rounded
    to its patch grid) while the DiT encodes it at its own size rounded down to 16; the token counts of the two only
    agree when the processor leaves the picture alone. That holds for sides that are multiples of twice the
    processor's patch grid, from the square root of its smallest to that of its largest pixel count (512 to 2048
    for zai-org/GLM-Image, 32 to 128 for tiny-glm), at most 4:1.
    """
    image_processor = pipe.processor.image_processor
    step = 2 * image_processor.patch_size * image_processor.merge_size
    shortest = round(math.sqrt(image_processor.size["shortest_edge"]))
    longest = round(math.sqrt(image_processor.size["longest_edge"]))
    low = -(-shortest // step) * step
    high = longest // step * step
    return SizeRules(
        min_side=low, max_side=high, multiple=step, max_pixels=high * high, max_aspect=GLM_IMAGE.max_reference_aspect
    )


def fit_reference(image: Image.Image, pipe: GlmImagePipeline) -> Image.Image:
    """The picture resized (keeping its shape as far as the rules allow) to a size the pipeline reads as it is."""
    from PIL import Image as PILImage

    from ..sizes import fit_size

    size = fit_size(image.width, image.height, reference_rules(pipe))
    image = image.convert("RGB")
    return image if image.size == size else image.resize(size, PILImage.Resampling.LANCZOS)


def plan_edit(
    pipe: GlmImagePipeline, prompt: str, pictures: Sequence[Image.Image], height: int, width: int, device: Any
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """``pipe.generate_prior_tokens(prompt, height, width, image=[pictures])`` for one prompt, with THE WORKAROUND.

    KNOWN UPSTREAM FAULT (diffusers 0.42.1 + transformers 5.23; zai-org/GLM-Image #20, #31, diffusers PR #13052):
    ``generate_prior_tokens`` concatenates ``get_image_features(...).pooler_output``, a list of per-picture
    (C, h, w) tensors, before ``get_image_tokens``, which wants that list: every edit fails in the VQ encoder
    ("expected input[1, 1, h, w] to have 32 channels"), and pictures of different shapes fail at the concatenation
    itself. This is the same function for one prompt, keeping the list. The AR sampling is left to the caller's
    :func:`seeded_sampling`, as for text-to-image. ``tests/test_glm_image.py`` runs the unpatched call and FAILS
    once the installed versions no longer need this: then call ``pipe.generate_prior_tokens`` for edits too and
    delete this function.

    Returns ``(prior_token_ids, [picture_token_ids], [picture_grids])``: the arguments ``__call__`` takes as
    ``prior_token_ids``, ``prior_token_image_ids`` and ``source_image_grid_thw``.
    """
    import torch
    from diffusers.utils.accelerate_utils import apply_forward_hook

    encoder = pipe.vision_language_encoder
    content = [{"type": "image", "image": picture} for picture in pictures] + [{"type": "text", "text": prompt}]
    inputs = pipe.processor.apply_chat_template(
        [[{"role": "user", "content": content}]],
        tokenize=True,
        padding=False,
        target_h=height,
        target_w=width,
        return_dict=True,
        return_tensors="pt",
    ).to(device)
    grids = inputs["image_grid_thw"]  # the pictures' grids, then the target's
    source_grids = grids[: len(pictures)]
    max_new_tokens, _, token_h, token_w = pipe._compute_generation_params(image_grid_thw=grids, is_text_to_image=False)

    # The fix: the per-picture list goes to get_image_tokens as it is. get_image_features is not forward(), so with
    # model CPU offload it must move the model to the GPU itself, as diffusers' own encode()/decode() do.
    features = apply_forward_hook(type(encoder).get_image_features)(encoder, inputs["pixel_values"], source_grids)
    picture_ids = encoder.get_image_tokens(features.pooler_output, source_grids)
    per_picture = torch.split(picture_ids, source_grids.prod(dim=-1).tolist())
    upsampled = [
        pipe._upsample_token_ids(ids, int(grid_h), int(grid_w)).squeeze(0)
        for ids, (_, grid_h, grid_w) in zip(per_picture, source_grids.tolist(), strict=True)
    ]
    picture_grids = source_grids.clone()
    picture_grids[:, 1:] *= 2

    outputs = encoder.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=True)
    large = pipe._extract_large_image_tokens(outputs, inputs["input_ids"].shape[-1], 0, token_h * token_w)
    prior_token_ids = pipe._upsample_token_ids(large, token_h, token_w)
    return prior_token_ids, [torch.cat(upsampled, dim=0)], [picture_grids]


def call_glm_image(
    pipe: GlmImagePipeline,
    job: Job,
    *,
    step_end: StepEnd,
    on_phase: PhaseCallback | None,
    should_stop: StopCheck | None,
) -> list[Image.Image]:
    """GLM-Image's :data:`~glmimage.models.run.PipelineCall`: plan (the AR model writes the image tokens; no
    step callback there, so Stop is checked before each token), then denoise with ``step_end`` after each step.

    ``job.images`` (RGB, e.g. from ``glmimage.images``) makes it an edit; each is first fitted to a size the
    pipeline reads as it is (:func:`reference_rules`). The plan is written once and shared by the
    ``job.num_images`` pictures, which differ by their denoising noise, as in diffusers. The clean-up on every exit
    is :func:`~glmimage.models.run.run_pipeline`'s."""
    import torch

    total = job.steps
    device = pipe._execution_device
    pictures = [fit_reference(image, pipe) for image in job.images]
    if should_stop is not None and should_stop():
        raise StopRequested(0, total)
    if on_phase is not None:
        on_phase(PLANNING)
    with (
        torch.no_grad(),
        seeded_sampling(device, job.seed),
        _stop_between_tokens(pipe.vision_language_encoder, should_stop, total),
    ):
        if pictures:
            plan = plan_edit(pipe, job.prompt, pictures, job.height, job.width, device)
        else:
            plan = pipe.generate_prior_tokens(prompt=job.prompt, height=job.height, width=job.width, device=device)
    if should_stop is not None and should_stop():
        raise StopRequested(0, total)
    if on_phase is not None:
        on_phase(DENOISING)
    prior_token_ids, picture_token_ids, picture_grids = plan
    output = pipe(
        prompt=job.prompt,
        image=pictures or None,
        height=job.height,
        width=job.width,
        num_inference_steps=total,
        guidance_scale=job.guidance_scale,
        num_images_per_prompt=job.num_images,
        generator=torch.Generator("cpu").manual_seed(job.seed),
        prior_token_ids=prior_token_ids,
        prior_token_image_ids=picture_token_ids,
        source_image_grid_thw=picture_grids,
        callback_on_step_end=step_end,
    )
    return list(output.images)


def run_glm_image(
    pipe: GlmImagePipeline,
    *,
    prompt: str,
    images: Sequence[Image.Image] = (),
    width: int,
    height: int,
    num_inference_steps: int,
    guidance_scale: float,
    num_images: int = 1,
    seed: int,
    on_phase: PhaseCallback | None = None,
    on_step: StepCallback | None = None,
    should_stop: StopCheck | None = None,
) -> list[Image.Image]:
    """Run GLM-Image for one request through :func:`~glmimage.models.run.run_pipeline` and return its
    ``num_images`` pictures of ``width`` x ``height``. Raises :class:`StopRequested` when ``should_stop()`` turns
    true, ``EngineError`` ("error.oom", "error.generation_failed") when the call fails."""
    job = Job(prompt, "", width, height, num_images, num_inference_steps, guidance_scale, seed, tuple(images))
    return run_pipeline(pipe, job, call=call_glm_image, on_step=on_step, on_phase=on_phase, should_stop=should_stop)
