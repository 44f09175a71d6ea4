"""GPU fast paths for the CogView4 pipeline, each off or on, applied in one place.

The app's loader builds a ``FastPaths`` from its settings and calls ``prepare_pipeline`` once, after
``CogView4Pipeline.from_pretrained``. The order of the steps matters and lives only here:

1. quantize (torchao int8 weight-only) the transformer and the text encoder, where the weights are;
2. model/sequential CPU offload (CUDA only), or else ``pipe.to(device)``. With offload the pipeline is never moved
   to the GPU first: the whole model on a 24 GB card runs out of memory before offload could help;
3. diffusers' first-block cache on the transformer;
4. ``torch.compile`` of the transformer, last, so it compiles the module as it will run.

``bucketed_prompt_embeds`` encodes prompts like the pipeline does, but pads them to a few fixed lengths, so the
compiled transformer sees a handful of shapes instead of one per prompt length.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

# torch and diffusers are imported where they are used, so reading the settings (app.py --help, start-up
# before the page is served) does not wait for them.
if TYPE_CHECKING:
    import torch
    from diffusers import CogView4Pipeline

logger = logging.getLogger(__name__)

OFFLOAD_MODES = ("none", "model", "sequential")
QUANTIZE_MODES = ("none", "int8")
DEFAULT_PROMPT_BUCKETS = (128, 256, 512, 1024)
# CogView4Pipeline pads every prompt to a multiple of 16 tokens; buckets stay on that grid.
_PROMPT_LENGTH_MULTIPLE = 16


@dataclass(frozen=True)
class FastPaths:
    """Which GPU fast paths to apply. The defaults are all off: plain ``pipe.to(device)``.

    Attributes:
        offload: "none"; "model" moves whole components to the GPU only while they run
            (``enable_model_cpu_offload``); "sequential" does it layer by layer (least memory, slowest).
        compile: ``torch.compile`` of the transformer. The first generation (and each new shape) compiles.
        cache_threshold: > 0 turns on diffusers' first-block cache on the transformer with this threshold
            (higher skips more steps: faster, lower quality); 0 is off.
        quantize: "int8" quantizes the linear weights of the transformer and the text encoder with torchao
            int8 weight-only (about half the memory of bf16); "none" keeps them as loaded.
    """

    offload: str = "none"
    compile: bool = False
    cache_threshold: float = 0.0
    quantize: str = "none"

    def __post_init__(self) -> None:
        if self.offload not in OFFLOAD_MODES:
            raise ValueError(f"Unknown offload mode {self.offload!r}: choose one of {', '.join(OFFLOAD_MODES)}.")
        if self.quantize not in QUANTIZE_MODES:
            raise ValueError(f"Unknown quantize mode {self.quantize!r}: choose one of {', '.join(QUANTIZE_MODES)}.")
        if not self.cache_threshold >= 0.0:  # also rejects NaN
            raise ValueError(f"cache_threshold must be 0 (off) or positive, got {self.cache_threshold}.")


def prepare_pipeline(pipe: CogView4Pipeline, device: torch.device, fast: FastPaths) -> None:
    """Place the pipeline on ``device`` with the chosen fast paths, in the one order that works.

    quantize -> offload (CUDA only; the pipeline is never moved to the GPU first) or ``pipe.to(device)`` -> cache
    -> compile. VAE slicing and tiling are always on: they cost little and keep large decodes from running out of
    memory. Raises ValueError when offload is asked for on a device that is not a CUDA GPU, and ImportError when
    int8 is asked for without torchao.
    """
    import torch

    device = torch.device(device)
    if fast.offload != "none" and device.type != "cuda":
        raise ValueError(
            f"CPU offload ({fast.offload!r}) needs a CUDA GPU, but the device is {device}. "
            "Turn offload off or run on a CUDA device."
        )

    if fast.quantize == "int8":
        _quantize_int8(pipe.transformer)
        _quantize_int8(pipe.text_encoder)

    if fast.offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif fast.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)

    pipe.vae.enable_slicing()
    pipe.vae.enable_tiling()

    if fast.cache_threshold > 0:
        from diffusers import FirstBlockCacheConfig

        pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=fast.cache_threshold))

    if fast.compile:
        # In place (nn.Module.compile), so the pipeline keeps its CogView4Transformer2DModel with its config,
        # dtype and cache_context; a wrapper from torch.compile(module) would hide them.
        pipe.transformer.compile()


def _quantize_int8(module: torch.nn.Module) -> None:
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError as error:
        raise ImportError(
            "int8 quantization needs torchao, which is not installed (pip install torchao). Or set quantize to 'none'."
        ) from error
    quantize_(module, Int8WeightOnlyConfig())


def bucketed_prompt_embeds(
    pipe: CogView4Pipeline,
    prompts: list[str],
    device: torch.device,
    dtype: torch.dtype,
    max_sequence_length: int = 1024,
    buckets: Sequence[int] = DEFAULT_PROMPT_BUCKETS,
) -> torch.Tensor:
    """Encode prompts like ``CogView4Pipeline._get_glm_embeds``, but left-padded to a fixed bucket length.

    The pipeline pads to the next multiple of 16, so every prompt length is a new shape and ``torch.compile``
    recompiles. Here the token ids are left-padded with the pad token (as the pipeline does) up to the smallest
    bucket that holds them. Returns the text encoder's ``hidden_states[-2]``, shape (len(prompts), bucket, hidden),
    to pass as ``prompt_embeds`` / ``negative_prompt_embeds``.
    """
    import torch

    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of strings.")
    buckets = tuple(buckets)
    on_grid = all(b > 0 and b % _PROMPT_LENGTH_MULTIPLE == 0 for b in buckets)
    increasing = all(a < b for a, b in itertools.pairwise(buckets))
    if not buckets or not on_grid or not increasing:
        raise ValueError(f"buckets must be increasing positive multiples of {_PROMPT_LENGTH_MULTIPLE}, got {buckets}.")
    if buckets[-1] < max_sequence_length:
        raise ValueError(
            f"The largest bucket ({buckets[-1]}) must hold max_sequence_length ({max_sequence_length}) tokens."
        )

    text_inputs = pipe.tokenizer(
        prompts,
        padding="longest",
        max_length=max_sequence_length,
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    )
    input_ids = text_inputs.input_ids
    longest = max(token_count(pipe.tokenizer, prompt) for prompt in prompts)
    if longest > max_sequence_length:
        logger.warning(
            "A prompt has %d tokens; only the first %d are used (max_sequence_length).", longest, max_sequence_length
        )

    length = input_ids.shape[1]
    bucket = next(b for b in buckets if b >= length)
    pad_ids = torch.full(
        (input_ids.shape[0], bucket - length), fill_value=pipe.tokenizer.pad_token_id, dtype=input_ids.dtype
    )
    input_ids = torch.cat([pad_ids, input_ids], dim=1)
    with torch.no_grad():
        hidden_states = pipe.text_encoder(input_ids.to(device), output_hidden_states=True).hidden_states
    return hidden_states[-2].to(dtype=dtype, device=device)


def token_count(tokenizer, prompt: str) -> int:
    """Number of tokens the pipeline sees for ``prompt``, special tokens included, before any truncation."""
    return len(tokenizer(prompt, add_special_tokens=True, truncation=False).input_ids)
