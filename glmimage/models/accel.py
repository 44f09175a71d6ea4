"""GPU fast paths for the CogView4 pipeline, each off or on, applied in one place, and the pool of pipelines.

The app's loader builds a ``FastPaths`` from its settings, loads the weights once, and calls ``pipelines_for``,
which gives each device entry its own pipeline and applies ``prepare_pipeline`` to it. The order of the steps
matters and lives only here:

1. quantize (torchao int8 weight-only) the transformer and the text encoder, where the weights are;
2. model/sequential CPU offload (CUDA only), or else ``pipe.to(device)``. With offload the pipeline is never moved
   to the GPU first: the whole model on a 24 GB card runs out of memory before offload could help;
3. diffusers' first-block cache on the transformer;
4. ``torch.compile`` of the transformer, last, so it compiles the module as it will run. It compiles with dynamic
   shapes, so prompts of any length and images of any size reuse one graph (one more for batches of 2-4 images):
   the prompts are never padded beyond the pipeline's own multiple of 16, which would change the picture (the
   text encoder runs without an attention mask, so pad tokens change the embeddings of the real ones).

Combinations that cannot work are refused at start by ``glmimage.config.Settings`` (see the README's table).
"""

from __future__ import annotations

import copy
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
# The components int8 quantizes unless told otherwise (CogView4's heavy ones; a family names its own).
DEFAULT_QUANTIZED = ("transformer", "text_encoder")


@dataclass(frozen=True)
class FastPaths:
    """Which GPU fast paths to apply. The defaults are all off: plain ``pipe.to(device)``.

    Attributes:
        offload: "none"; "model" moves whole components to the GPU only while they run
            (``enable_model_cpu_offload``); "sequential" does it layer by layer (least memory, slowest).
        compile: ``torch.compile`` of the transformer, with dynamic shapes. The warm-up compiles; a batch of
            one image and a batch of several are one graph each, whatever the prompt length or image size.
        cache_threshold: > 0 turns on diffusers' first-block cache on the transformer with this threshold
            (higher skips more steps: faster, lower quality); 0 is off.
        quantize: "int8" quantizes the linear weights of the family's heavy components (CogView4: the
            transformer and the text encoder; GLM-Image: the AR model and the transformer) with torchao int8
            weight-only (about half the memory of bf16); "none" keeps them as loaded.
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

    @property
    def stateful_transformer(self) -> bool:
        """Whether the transformer carries state between the steps of a call (cache hooks, a compiled graph), so
        two pipelines must never share one."""
        return self.cache_threshold > 0 or self.compile or self.offload != "none"


def prepare_pipeline(
    pipe: CogView4Pipeline, device: torch.device, fast: FastPaths, quantize: Sequence[str] = DEFAULT_QUANTIZED
) -> None:
    """Place the pipeline on ``device`` with the chosen fast paths, in the one order that works.

    quantize -> offload (CUDA only; the pipeline is never moved to the GPU first) or ``pipe.to(device)`` -> cache
    -> compile. VAE slicing and tiling are always on: they cost little and keep large decodes from running out of
    memory. Raises ValueError when offload is asked for on a device that is not a CUDA GPU, and ImportError when
    int8 is asked for without torchao. ``quantize`` names the components int8 shrinks.
    """
    import torch

    device = torch.device(device)
    if fast.offload != "none" and device.type != "cuda":
        raise ValueError(
            f"CPU offload ({fast.offload!r}) needs a CUDA GPU, but the device is {device}. "
            "Turn offload off or run on a CUDA device."
        )

    if fast.quantize == "int8":
        for name in quantize:
            _quantize_int8(getattr(pipe, name))

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
        import torch.fx.experimental._config as fx_config

        # Dynamic shapes, without "duck sizing": otherwise a prompt of 16 tokens (as long as the 16 latent
        # channels) or a text as long as the latent side ties two sizes together, and the next prompt recompiles.
        # Process-wide, read when a graph is compiled; tests/test_accel.py fails if a prompt length recompiles.
        fx_config.use_duck_shape = False
        # In place (nn.Module.compile), so the pipeline keeps its CogView4Transformer2DModel with its config,
        # dtype and cache_context; a wrapper from torch.compile(module) would hide them.
        pipe.transformer.compile(dynamic=True)


def pipelines_for(
    pipe: CogView4Pipeline,
    devices: Sequence[torch.device],
    fast: FastPaths,
    quantize: Sequence[str] = DEFAULT_QUANTIZED,
) -> list[CogView4Pipeline]:
    """One prepared pipeline per entry of ``devices``, from ``pipe`` as loaded (on the CPU, no fast path yet), so
    the weights are read from disk once per process however many pipelines there are.

    Nothing that keeps state during a call is shared between two pipelines: each has its own pipeline object and
    its own copy of every component that is not a module (scheduler: step index, sigmas; tokenizer: a Rust
    tokenizer refuses concurrent use; GLM-Image's processor). The first pipeline of a device has its own modules; a
    further pipeline on the same device shares the others (they keep no state between calls) and has its own
    transformer when that carries per-call state (cache hooks, a compiled graph), and with offload its own copy of
    everything (offload hooks belong to one pipeline). A module is deep-copied before any fast path touches it;
    its last user takes ``pipe``'s own.
    """
    import torch

    modules = [name for name, part in pipe.components.items() if isinstance(part, torch.nn.Module)]
    owns: list[dict[str, bool]] = []
    seen: set[torch.device] = set()
    for device in devices:
        first = device not in seen
        seen.add(device)
        own = {name: first or fast.offload != "none" for name in modules}
        own["transformer"] = own["transformer"] or fast.stateful_transformer
        owns.append(own)
    uses_left = {name: sum(own[name] for own in owns) for name in modules}
    by_device: dict[torch.device, dict[str, torch.nn.Module]] = {}
    pipelines = []
    for device, own in zip(devices, owns, strict=True):
        parts = {name: copy.deepcopy(part) for name, part in pipe.components.items() if name not in modules}
        for name in modules:
            if own[name]:
                uses_left[name] -= 1
                original = getattr(pipe, name)
                parts[name] = original if uses_left[name] == 0 else copy.deepcopy(original)
                by_device.setdefault(device, {}).setdefault(name, parts[name])
            else:
                parts[name] = by_device[device][name]
        worker_pipe = type(pipe)(**parts)
        worker_pipe.set_progress_bar_config(disable=True)
        prepare_pipeline(worker_pipe, device, fast, quantize)
        pipelines.append(worker_pipe)
    return pipelines


def _quantize_int8(module: torch.nn.Module) -> None:
    """Quantize the linear weights, once: a module shared by two pipelines of one device is quantized already."""
    if any(type(weight).__module__.startswith("torchao") for weight in module.parameters()):
        return
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError as error:
        raise ImportError(
            "int8 quantization needs torchao, which is not installed (pip install torchao). Or set quantize to 'none'."
        ) from error
    quantize_(module, Int8WeightOnlyConfig())


def token_count(tokenizer, prompt: str) -> int:
    """Number of tokens the pipeline sees for ``prompt``, special tokens included, before any truncation."""
    return len(tokenizer(prompt, add_special_tokens=True, truncation=False).input_ids)
