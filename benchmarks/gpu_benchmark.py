"""Seconds per image and peak GPU memory of CogView4 with each GPU fast path of glmimage.models.accel.

The components are FULL-SIZE CogView4-6B (transformer 6.4B, GLM-4-9B text encoder 8.8B, VAE) with random weights,
created in place on the GPU in bf16 (built on the meta device, then ``to_empty`` and ``normal_``), so real timings
and memory come in seconds without downloading weights. Random weights draw noise, not pictures: speed and memory
are those of the real model, except the first-block cache, whose hit rate depends on the weights; the table counts
the transformer passes that really ran all blocks so a cache result can be judged.

Each variant is isolated: its own freshly built pipeline, ``glmimage.models.accel.prepare_pipeline`` with its
fast paths, one warm-up generation (it includes compilation; reported separately), then ``--repeats`` timed
generations.
Prompts are encoded with ``bucketed_prompt_embeds`` inside the timed region, as the app does. A variant that
fails is reported with the reason and the rest go on; on a machine without CUDA, variants that need it are
reported as skipped. Results are written after each variant, to PREFIX.md and PREFIX.json.

    python benchmarks/gpu_benchmark.py [--shrunk] [--device cuda|cpu] [--steps N] [--size WxH]
        [--variants plain,compile,cache,offload,int8,best] [--repeats N] [--out PREFIX]

``--shrunk`` uses configs as small as glmimage.models.tiny's, so the whole script runs on CPU in seconds (CI).
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import platform
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, CogView4Pipeline, CogView4Transformer2DModel, FlowMatchEulerDiscreteScheduler
from diffusers.utils import logging as diffusers_logging
from transformers import GlmConfig, GlmModel

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere, without installing the package
    sys.path.insert(0, str(REPO_ROOT))

from glmimage.models.accel import FastPaths, bucketed_prompt_embeds, prepare_pipeline  # noqa: E402
from glmimage.models.tiny import _build_tokenizer  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "gpu_benchmark"
DEFAULT_VARIANTS = ("plain", "compile", "cache", "offload", "int8", "best")
DEFAULT_CACHE_THRESHOLD = 0.1
SEED = 0
PROMPT = (
    "A photo of an astronaut riding a horse on Mars, red desert, dramatic light, highly detailed, 4k, "
    'a sign that reads "GLM Image" in the background'
)
NEGATIVE_PROMPT = ""

# glm-4-9b, as THUDM/CogView4-6B's text_encoder/config.json; vocab_size and pad/eos ids come with the tokenizer.
FULL_TEXT_ENCODER = {
    "hidden_size": 4096,
    "intermediate_size": 13696,
    "num_hidden_layers": 40,
    "num_attention_heads": 32,
    "num_key_value_heads": 2,
    "head_dim": 128,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1.5625e-07,
    "attention_bias": True,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
}
FULL_VOCAB_SIZE = 151552
FULL_TRANSFORMER = {
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 28,
    "attention_head_dim": 128,
    "num_attention_heads": 32,
    "text_embed_dim": 4096,
    "time_embed_dim": 512,
    "condition_dim": 256,
    "pos_embed_max_size": 128,
    "sample_size": 128,
    "rope_axes_dim": (256, 256),
}
FULL_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 512, 1024, 1024),
    "layers_per_block": 3,
    "act_fn": "silu",
    "latent_channels": 16,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 1.0,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "mid_block_add_attention": False,
}
# As small as glmimage.models.tiny, with the same block counts that drive shapes.
SHRUNK_TEXT_ENCODER = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "max_position_embeddings": 2048,
    "attention_bias": True,
}
SHRUNK_TRANSFORMER = {
    **FULL_TRANSFORMER,
    "num_layers": 2,
    "attention_head_dim": 8,
    "num_attention_heads": 2,
    "text_embed_dim": 32,
    "time_embed_dim": 16,
    "condition_dim": 8,
}
SHRUNK_VAE = {**FULL_VAE, "block_out_channels": (8, 8, 16, 16), "layers_per_block": 1, "norm_num_groups": 4}


@dataclass(frozen=True)
class Variant:
    name: str
    fast: FastPaths
    description: str


def _variants(cache_threshold: float) -> dict[str, Variant]:
    variants = [
        Variant("plain", FastPaths(), "no fast path: pipe.to(device)"),
        Variant("compile", FastPaths(compile=True), "torch.compile of the transformer"),
        Variant("cache", FastPaths(cache_threshold=cache_threshold), f"first-block cache {cache_threshold}"),
        Variant("offload", FastPaths(offload="model"), "model CPU offload"),
        Variant("int8", FastPaths(quantize="int8"), "torchao int8 weight-only"),
        Variant("int8_offload", FastPaths(quantize="int8", offload="model"), "int8 + model CPU offload"),
        Variant(
            "best", FastPaths(compile=True, cache_threshold=cache_threshold), f"compile + cache {cache_threshold}"
        ),
    ]
    return {variant.name: variant for variant in variants}


@dataclass
class Result:
    variant: str
    description: str
    status: str  # "ok", "failed" or "skipped"
    reason: str = ""
    seconds_per_image: float | None = None
    run_seconds: list[float] = field(default_factory=list)
    first_run_seconds: float | None = None  # warm-up: includes compilation
    compile_seconds: float | None = None  # first run minus a timed run, for compiled variants
    setup_seconds: float | None = None  # build random weights + prepare_pipeline
    peak_memory_gib: float | None = None  # during the timed runs
    first_run_peak_memory_gib: float | None = None  # setup + warm-up
    full_transformer_passes_per_image: float | None = None  # passes that ran every block (cache misses)
    transformer_passes_per_image: int | None = None  # steps x 2 (classifier-free guidance)
    graphs_compiled_during_timing: int | None = None


def _materialize(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Give a module built under ``init_empty_weights`` real random weights on ``device``, in place."""
    buffers = {name: buffer.clone() for name, buffer in module.named_buffers()}  # real: computed at init (RoPE)
    module.to(dtype)  # free on the meta device; the buffers keep their own dtype below
    module.to_empty(device=device)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            elif param.ndim == 1:  # norm scales
                param.fill_(1.0)
            else:
                param.normal_(mean=0.0, std=0.02)
    for name, buffer in buffers.items():
        owner_name, _, buffer_name = name.rpartition(".")
        module.get_submodule(owner_name)._buffers[buffer_name] = buffer.to(device)


def build_pipeline(shrunk: bool, device: torch.device, dtype: torch.dtype) -> CogView4Pipeline:
    """A CogView4Pipeline with the real component classes and random weights created on ``device``."""
    tokenizer = _build_tokenizer()
    vocab_size = len(tokenizer) if shrunk else FULL_VOCAB_SIZE
    with init_empty_weights(include_buffers=False):
        text_encoder = GlmModel(
            GlmConfig(
                vocab_size=vocab_size,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=[tokenizer.eos_token_id],
                **(SHRUNK_TEXT_ENCODER if shrunk else FULL_TEXT_ENCODER),
            )
        )
        transformer = CogView4Transformer2DModel(**(SHRUNK_TRANSFORMER if shrunk else FULL_TRANSFORMER))
        vae = AutoencoderKL(**(SHRUNK_VAE if shrunk else FULL_VAE))
    for module in (text_encoder, transformer, vae):
        _materialize(module, device, dtype)
        module.eval()
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_shift=0.25, max_shift=0.75, base_image_seq_len=256, use_dynamic_shifting=True, time_shift_type="linear"
    )
    pipe = CogView4Pipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _free_memory(device: torch.device) -> None:
    gc.collect()
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def run_variant(variant: Variant, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> Result:
    result = Result(variant.name, variant.description, status="ok")
    _free_memory(device)
    start = time.perf_counter()
    # Weights are created on the GPU (fast); with offload they then wait in CPU memory, as after from_pretrained.
    pipe = build_pipeline(args.shrunk, device, dtype)
    if variant.fast.offload != "none":
        pipe.to("cpu")
        _free_memory(device)
    prepare_pipeline(pipe, device, variant.fast)
    result.setup_seconds = time.perf_counter() - start

    full_passes = [0]

    def count_full_pass(module, inputs):
        full_passes[0] += 1

    if not variant.fast.compile:  # under torch.compile a Python counter is a guard: it would force recompiles
        # The last block's attention runs only when the transformer runs all blocks (never on a cache hit).
        pipe.transformer.transformer_blocks[-1].attn1.register_forward_pre_hook(count_full_pass)

    def generate() -> float:
        _synchronize(device)
        start = time.perf_counter()
        prompt_embeds = bucketed_prompt_embeds(pipe, [PROMPT], device, dtype)
        negative_prompt_embeds = bucketed_prompt_embeds(pipe, [NEGATIVE_PROMPT], device, dtype)
        pipe(
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            width=args.width,
            height=args.height,
            num_inference_steps=args.steps,
            guidance_scale=3.5,
            generator=torch.Generator().manual_seed(SEED),
            output_type="pil",
        )
        _synchronize(device)
        return time.perf_counter() - start

    result.first_run_seconds = generate()
    result.first_run_peak_memory_gib = _peak_gib(device)
    graphs_after_warmup = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    full_passes[0] = 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result.run_seconds = [generate() for _ in range(args.repeats)]
    result.peak_memory_gib = _peak_gib(device)
    result.seconds_per_image = statistics.mean(result.run_seconds)
    if variant.fast.compile:
        result.compile_seconds = max(result.first_run_seconds - result.seconds_per_image, 0.0)
        graphs_now = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        result.graphs_compiled_during_timing = graphs_now - graphs_after_warmup
    else:
        result.full_transformer_passes_per_image = full_passes[0] / args.repeats
    result.transformer_passes_per_image = 2 * args.steps
    return result


def _format(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def to_markdown(meta: dict, results: list[Result]) -> str:
    plain = next((r for r in results if r.variant == "plain" and r.status == "ok"), None)
    lines = [
        f"# CogView4 GPU fast paths — {meta['device_name']}",
        "",
        (
            f"{meta['date']} · {meta['model']} · {meta['dtype']} · {meta['width']}x{meta['height']}, "
            f"{meta['steps']} steps, guidance 3.5, {meta['repeats']} timed run(s) after 1 warm-up · "
            f"torch {meta['torch']} · diffusers {meta['diffusers']} · transformers {meta['transformers']} · "
            f"torchao {meta['torchao'] or 'not installed'}"
        ),
        "",
        (
            "| variant | what | status | s/image | speed-up vs plain | peak GPU memory (GiB) | first run (s) "
            "| compile (s) | setup (s) | full transformer passes / image | note |"
        ),
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        speedup = None
        if plain is not None and r.seconds_per_image:
            speedup = plain.seconds_per_image / r.seconds_per_image
        passes = "–"
        if r.full_transformer_passes_per_image is not None:
            passes = f"{r.full_transformer_passes_per_image:g} / {r.transformer_passes_per_image}"
        elif r.status == "ok":
            passes = "not counted (compiled)"
        note = r.reason
        if r.graphs_compiled_during_timing:
            note = f"{r.graphs_compiled_during_timing} graph(s) compiled during the timed runs"
        lines.append(
            f"| {r.variant} | {r.description} | {r.status} | {_format(r.seconds_per_image)} | "
            f"{_format(speedup)} | {_format(r.peak_memory_gib)} | {_format(r.first_run_seconds)} | "
            f"{_format(r.compile_seconds)} | {_format(r.setup_seconds)} | {passes} | {note.replace('|', '/')} |"
        )
    lines += [
        "",
        "Random weights: speed and memory are those of the real model; the first-block cache's hit rate (and so its",
        "speed-up) depends on the weights — see the full-pass column. Peak memory is torch.cuda.max_memory_allocated",
        "during the timed runs (first run: setup + warm-up, in the JSON).",
    ]
    return "\n".join(lines) + "\n"


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 1024x1024, got {text!r}") from None
    if width <= 0 or height <= 0 or width % 16 or height % 16:
        raise argparse.ArgumentTypeError(f"width and height must be positive multiples of 16, got {text!r}")
    return width, height


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shrunk", action="store_true", help="tiny configs: runs on CPU in seconds")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--size", type=_size, default=(1024, 1024), help="WIDTHxHEIGHT, default 1024x1024")
    parser.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated, from {','.join(_variants(DEFAULT_CACHE_THRESHOLD))}",
    )
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per variant, after one warm-up")
    parser.add_argument("--cache-threshold", type=float, default=DEFAULT_CACHE_THRESHOLD)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="writes OUT.md and OUT.json")
    args = parser.parse_args(argv)
    args.width, args.height = args.size
    args.variants = [name.strip() for name in args.variants.split(",") if name.strip()]
    known = _variants(args.cache_threshold)
    unknown = [name for name in args.variants if name not in known]
    if unknown or not args.variants:
        parser.error(f"unknown variant(s) {unknown}: choose from {', '.join(known)}")
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be at least 1")
    if args.cache_threshold <= 0:
        parser.error("--cache-threshold must be positive")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but CUDA is not available here (use --device cpu)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    diffusers_logging.set_verbosity_error()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "model": "CogView4-6B shapes, shrunk" if args.shrunk else "CogView4-6B shapes (full size), random weights",
        "dtype": str(dtype).removeprefix("torch."),
        "width": args.width,
        "height": args.height,
        "steps": args.steps,
        "repeats": args.repeats,
        "cache_threshold": args.cache_threshold,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": _package_version("diffusers"),
        "transformers": _package_version("transformers"),
        "torchao": _package_version("torchao"),
    }
    variants = _variants(args.cache_threshold)
    results: list[Result] = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.variants:
        variant = variants[name]
        print(f"[gpu_benchmark] {name}: {variant.description} ...", file=sys.stderr, flush=True)
        if variant.fast.offload != "none" and device.type != "cuda":
            result = Result(name, variant.description, status="skipped", reason="skipped: needs CUDA")
        else:
            try:
                result = run_variant(variant, args, device, dtype)
            except Exception as error:  # a failing variant is a result; the others still run
                traceback.print_exc()
                reason = f"{type(error).__name__}: {error}".splitlines()[0][:300]
                result = Result(name, variant.description, status="failed", reason=reason)
        _free_memory(device)
        results.append(result)
        markdown = to_markdown(meta, results)
        Path(f"{args.out}.md").write_text(markdown, encoding="utf-8")
        report = {**meta, "results": [asdict(r) for r in results]}
        Path(f"{args.out}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
