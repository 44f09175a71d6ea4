"""Hugging Face ZeroGPU: a GPU lent per call, for a time the call asks for.

On ZeroGPU hardware (the ``SPACES_ZERO_GPU`` environment variable set by the Space), the one function that runs
the pipeline is wrapped in ``spaces.GPU`` with a duration that grows with the job's pixels, steps and images;
anywhere else nothing is wrapped and the ``spaces`` package is never imported (it is not a dependency: a
ZeroGPU Space lists it in its own requirements). ``spaces`` must be imported before anything starts CUDA, so
``app.py`` calls :func:`import_spaces` first. ZeroGPU refuses async functions; the wrapped one is plain.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

ENV = "SPACES_ZERO_GPU"
# Seconds asked for one job: a fixed part (moving weights, decoding, saving) plus a part per megapixel, step and
# image. Estimated for CogView4-6B on a ZeroGPU slice (~0.5 s per step at 1024x1024 with guidance); ZeroGPU
# ends a call that outlives its duration, so the estimate errs high. Capped: the bigger the duration asked,
# the longer a visitor waits for a GPU, and a Space's quota is spent by what is asked.
BASE_S = 15
SECONDS_PER_MEGAPIXEL_STEP = 0.5
MAX_S = 120

F = TypeVar("F", bound=Callable[..., Any])


def active(environ: Mapping[str, str] | None = None) -> bool:
    """True on ZeroGPU hardware."""
    value = (os.environ if environ is None else environ).get(ENV, "")
    return value.strip().lower() not in ("", "0", "false", "no", "off")


def import_spaces() -> None:
    """Import ``spaces`` on ZeroGPU hardware, before torch starts CUDA (it must come first); elsewhere nothing."""
    if active():
        import spaces  # noqa: F401


def gpu_seconds(width: int, height: int, steps: int, images: int) -> int:
    """The GPU time to ask for one job, in whole seconds, from BASE_S up to MAX_S."""
    megapixels = width * height / 2**20
    return min(MAX_S, math.ceil(BASE_S + SECONDS_PER_MEGAPIXEL_STEP * megapixels * steps * images))


def on_zero_gpu(generate: F, environ: Mapping[str, str] | None = None) -> F:
    """``generate`` (called as ``generate(request, ...)``) wrapped in ``spaces.GPU`` on ZeroGPU hardware, else
    ``generate`` itself."""
    if not active(environ):
        return generate
    import spaces

    def duration(request: Any, *_args: Any, **_kwargs: Any) -> int:
        return gpu_seconds(request.width, request.height, request.num_inference_steps, request.num_images)

    return spaces.GPU(duration=duration)(generate)
