"""Seconds per image and peak GPU memory of CogView4 with each GPU fast path of glmimage.models.accel.

The components are FULL-SIZE CogView4-6B (transformer 6.4B, GLM-4-9B text encoder 8.8B, VAE) with random weights,
created in place on the GPU in bf16 (built on the meta device, then ``to_empty`` and ``normal_``), so real timings
and memory come in seconds without downloading weights. Random weights draw noise, not pictures: speed and memory
are those of the real model, except the first-block cache, whose hit rate depends on the weights; the table counts
the transformer passes that really ran all blocks so a cache result can be judged.

Each variant is isolated: its own freshly built pipeline, ``glmimage.models.accel.prepare_pipeline`` with its
fast paths, one warm-up generation (it includes compilation; reported separately), then ``--repeats`` timed
generations. Each generation is one ``glmimage.models.run.run_pipeline`` call, as the app makes it (prompt
encoding included); the table reports any graph compiled during the timed runs (a recompile). A variant that
fails is reported with the reason and the rest go on; on a machine without CUDA, variants that need it are
reported as skipped. Results are written after each variant, to PREFIX.md and PREFIX.json.

    python benchmarks/gpu_benchmark.py [--shrunk] [--device cuda|cpu] [--steps N] [--size WxH]
        [--variants plain,compile,cache,offload,int8,best] [--repeats N] [--out PREFIX]

``--correctness`` runs the correctness pass instead (writes benchmarks/results/gpu_correctness.md and .json):
for every flag set the app supports (and, marked, the two it refuses), on one pipeline built as the app builds
it (``pipelines_for``): draw job B (the fresh picture), stop job A (another size, another prompt length) midway,
draw B again; provoke an out-of-memory error inside the call (a forward hook allocates 1 TiB on the GPU; on a
CPU, where memory overcommits, it raises ``torch.OutOfMemoryError`` itself), draw B again. Each B must equal the
fresh one. It also reports the stop latency (raising from the step callback against diffusers' ``_interrupt``,
which still decodes), where the models are after a stop with offload, GPU memory after a stop and after the OOM,
graphs compiled after the first job (recompiles), the difference from the plain picture, and, with two or more
CUDA devices (on a CPU: two CPU pipelines), the same B drawn on two pipelines at once.

    python benchmarks/gpu_benchmark.py --correctness [--shrunk] [--device cuda|cpu] [--size WxH]
        [--check-steps N] [--sets plain,cache,...] [--out PREFIX]

``--shrunk`` uses configs as small as glmimage.models.tiny's, so the whole script runs on CPU in seconds (CI).

``--model glm-image`` measures GLM-Image instead (see ``run_glm_variant``): full-size random weights (the 9B AR
model, the 7B DiT, the glyph encoder, the VAE), text-to-image and an edit from one picture, each through
``glmimage.models.glm_image.run_glm_image`` as the app runs them, with the planning (AR) and denoising seconds and
the peak memory of each; variants plain and offload (model CPU offload); 30 steps by default (the README's).
"""

from __future__ import annotations

import argparse
import concurrent.futures
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

import numpy as np
import torch
from accelerate import init_empty_weights
from diffusers import (
    AutoencoderKL,
    CogView4Pipeline,
    CogView4Transformer2DModel,
    FlowMatchEulerDiscreteScheduler,
    GlmImagePipeline,
    GlmImageTransformer2DModel,
)
from diffusers.utils import logging as diffusers_logging
from PIL import Image
from transformers import GlmConfig, GlmModel

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere, without installing the package
    sys.path.insert(0, str(REPO_ROOT))

from glmimage.errors import EngineError, GenerationStopped  # noqa: E402
from glmimage.models.accel import FastPaths, pipelines_for, prepare_pipeline  # noqa: E402
from glmimage.models.glm_image import DENOISING, PLANNING, run_glm_image  # noqa: E402
from glmimage.models.run import Job, run_pipeline  # noqa: E402
from glmimage.models.tiny import _build_tokenizer  # noqa: E402
from glmimage.models.tiny_glm import _CHAT_TEMPLATE, _PATCH, _ar_tokenizer, ensure_tiny_glm_model  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "gpu_benchmark"
DEFAULT_GLM_OUT = REPO_ROOT / "benchmarks" / "results" / "gpu_benchmark_glm"
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
        run_pipeline(pipe, Job(PROMPT, NEGATIVE_PROMPT, args.width, args.height, 1, args.steps, 3.5, SEED))
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


# ---- the correctness pass ---------------------------------------------------------------------------------------

DEFAULT_CORRECTNESS_OUT = REPO_ROOT / "benchmarks" / "results" / "gpu_correctness"
LONG_PROMPT = PROMPT + ", " + PROMPT  # job A: another prompt length than job B, so a recompile would show
# The refusals of glmimage.config.Settings, tried anyway so the table shows what they would do.
REFUSED = {"sequential+compile", "sequential+int8"}


def _flag_sets(cache_threshold: float) -> dict[str, FastPaths]:
    cache = cache_threshold
    return {
        "plain": FastPaths(),
        "cache": FastPaths(cache_threshold=cache),
        "compile": FastPaths(compile=True),
        "compile+cache": FastPaths(compile=True, cache_threshold=cache),
        "int8": FastPaths(quantize="int8"),
        "int8+compile": FastPaths(quantize="int8", compile=True),
        "offload": FastPaths(offload="model"),
        "offload+cache": FastPaths(offload="model", cache_threshold=cache),
        "offload+compile": FastPaths(offload="model", compile=True),
        "offload+int8": FastPaths(offload="model", quantize="int8"),
        "sequential": FastPaths(offload="sequential"),
        "sequential+cache": FastPaths(offload="sequential", cache_threshold=cache),
        "sequential+compile": FastPaths(offload="sequential", compile=True),
        "sequential+int8": FastPaths(offload="sequential", quantize="int8"),
    }


@dataclass
class Check:
    flags: str
    status: str  # "ok", "MISMATCH", "failed", "skipped"
    reason: str = ""
    stop_to_return_ms: float | None = None  # raising from the step callback (what the app does)
    interrupt_to_return_ms: float | None = None  # pipe._interrupt = True instead (plain only)
    after_stop_max_diff: int | None = None  # job B after the stop against the fresh B, 0-255
    models_on_cpu_after_stop: bool | None = None  # with model offload
    oom_key: str | None = None
    after_oom_max_diff: int | None = None
    gpu_mib: dict[str, float] = field(default_factory=dict)  # allocated: fresh, after stop, after OOM
    graphs_after_first_job: int | None = None  # compiled after job B's first draw: recompiles
    vs_plain_max_diff: int | None = None
    two_pipelines_max_diff: int | None = None


def _pixels(images: list) -> np.ndarray:
    return np.asarray(images[0].convert("RGB")).astype(np.int16)


def _max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a - b).max()) if a.shape == b.shape else 255


def _allocated_mib(device: torch.device) -> float | None:
    return torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _other_size(width: int, height: int) -> tuple[int, int]:
    if width != height:
        return height, width
    return max(32, round(width * 0.75 / 32) * 32), round(height * 1.25 / 32) * 32


def _graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def _out_of_memory_hook(device: torch.device, at_call: int):
    """A forward hook that makes the transformer's ``at_call``-th call run out of memory, inside the real call."""
    calls = [0]

    def hook(_module, _args, _output):
        calls[0] += 1
        if calls[0] == at_call:
            if device.type == "cuda":
                torch.empty(2**40, dtype=torch.uint8, device=device)  # 1 TiB: a real OOM from the allocator
            raise torch.OutOfMemoryError("out of memory (raised by the benchmark: a CPU overcommits memory)")

    return hook


def _stop_latency_ms(pipe, job: Job, stop_at: int, interrupt: bool, device: torch.device) -> float:
    """Milliseconds from the moment a stop is seen after step ``stop_at`` to the call's return."""
    seen = [0, 0.0]

    def on_step(done: int, _total: int) -> None:
        seen[0] = done

    def should_stop() -> bool:
        if seen[0] >= stop_at:
            _synchronize(device)
            seen[1] = time.perf_counter()
            return True
        return False

    if interrupt:

        def step_end(p, step, _timestep, tensors):
            if step + 1 == stop_at:
                _synchronize(device)
                seen[1] = time.perf_counter()
                p._interrupt = True
            return tensors

        arguments = {"prompt": job.prompt, "width": job.width, "height": job.height}
        pipe(
            **arguments,
            num_inference_steps=job.steps,
            guidance_scale=job.guidance_scale,
            generator=torch.Generator().manual_seed(job.seed),
            callback_on_step_end=step_end,
        )
    else:
        try:
            run_pipeline(pipe, job, on_step=on_step, should_stop=should_stop)
        except GenerationStopped:
            pass
    _synchronize(device)
    return (time.perf_counter() - seen[1]) * 1000


def run_check(
    name: str, fast: FastPaths, args: argparse.Namespace, device: torch.device, dtype: torch.dtype, plain_b
) -> tuple[Check, np.ndarray]:
    check = Check(name, status="ok")
    _free_memory(device)
    torch.manual_seed(SEED)  # the same random weights for every flag set, so pictures compare
    pipe = build_pipeline(args.shrunk, device, dtype)
    if fast.offload != "none":
        pipe.to("cpu")  # as after from_pretrained: offload starts from the CPU
        _free_memory(device)
    (pipe,) = pipelines_for(pipe, [device], fast)
    steps, stop_at = args.check_steps, max(1, args.check_steps // 2)
    width_b, height_b = _other_size(args.width, args.height)
    job_a = Job(LONG_PROMPT, "", args.width, args.height, 1, steps, 3.5, SEED)
    job_b = Job(PROMPT, "", width_b, height_b, 1, steps, 3.5, SEED)
    fresh_b = _pixels(run_pipeline(pipe, job_b))
    graphs = _graphs()
    check.gpu_mib["fresh"] = _allocated_mib(device)
    check.stop_to_return_ms = _stop_latency_ms(pipe, job_a, stop_at, interrupt=False, device=device)
    if name == "plain":
        check.interrupt_to_return_ms = _stop_latency_ms(pipe, job_a, stop_at, interrupt=True, device=device)
    if fast.offload == "model":
        check.models_on_cpu_after_stop = all(
            next(getattr(pipe, part).parameters()).device.type == "cpu" for part in ("transformer", "text_encoder")
        )
    check.gpu_mib["after stop"] = _allocated_mib(device)
    check.after_stop_max_diff = _max_diff(_pixels(run_pipeline(pipe, job_b)), fresh_b)

    handle = pipe.transformer.transformer_blocks[0].register_forward_hook(_out_of_memory_hook(device, at_call=3))
    try:
        run_pipeline(pipe, job_a)
    except EngineError as error:
        check.oom_key = error.key
    finally:
        handle.remove()
    check.gpu_mib["after OOM"] = _allocated_mib(device)
    check.after_oom_max_diff = _max_diff(_pixels(run_pipeline(pipe, job_b)), fresh_b)
    if fast.compile:
        check.graphs_after_first_job = _graphs() - graphs
    if plain_b is not None:
        check.vs_plain_max_diff = _max_diff(fresh_b, plain_b)
    if check.after_stop_max_diff > 1 or check.after_oom_max_diff > 1 or check.oom_key != "error.oom":
        check.status = "MISMATCH"
    del pipe
    return check, fresh_b


def run_two_pipelines(
    name: str, fast: FastPaths, args: argparse.Namespace, devices: list[torch.device], dtype: torch.dtype, expected
) -> Check:
    """Job B on two pipelines of the pool at once; each must draw what one fresh pipeline draws."""
    check = Check(f"{name}, {len(devices)} pipelines ({','.join(str(d) for d in devices)})", status="ok")
    torch.manual_seed(SEED)
    pipe = build_pipeline(args.shrunk, devices[0], dtype)
    pipes = pipelines_for(pipe, devices, fast)
    width_b, height_b = _other_size(args.width, args.height)
    job_b = Job(PROMPT, "", width_b, height_b, 1, args.check_steps, 3.5, SEED)
    with concurrent.futures.ThreadPoolExecutor(len(pipes)) as pool:
        drawn = list(pool.map(lambda p: _pixels(run_pipeline(p, job_b)), pipes))
    check.two_pipelines_max_diff = max(_max_diff(d, expected) for d in drawn)
    if check.two_pipelines_max_diff > 1:
        check.status = "MISMATCH"
    return check


def correctness_markdown(meta: dict, checks: list[Check]) -> str:
    def diff(value: int | None) -> str:
        return "–" if value is None else str(value)

    lines = [
        f"# GLM Image correctness pass — {meta['device_name']}",
        "",
        (
            f"{meta['date']} · {meta['model']} · {meta['dtype']} · job A {meta['width']}x{meta['height']} (long "
            f"prompt), job B {meta['width_b']}x{meta['height_b']}, {meta['steps']} steps, guidance 3.5 · torch "
            f"{meta['torch']} · diffusers {meta['diffusers']} · torchao {meta['torchao'] or 'not installed'}"
        ),
        "",
        "Max Δ: the largest difference of any pixel channel (0-255) from job B drawn by the same pipeline before",
        "anything happened to it (a fresh server's picture); ok means at most 1.",
        "",
        "| flags | status | stop → return (ms) | B after stop (max Δ) | models on CPU after stop | after OOM | "
        "B after OOM (max Δ) | GPU MiB: fresh / after stop / after OOM | graphs compiled after job 1 | "
        "vs plain (max Δ) | note |",
        "|---|---|---:|---:|---|---|---:|---|---:|---:|---|",
    ]
    for c in checks:
        stop = _format(c.stop_to_return_ms, 1)
        if c.interrupt_to_return_ms is not None:
            stop += f" (with _interrupt: {_format(c.interrupt_to_return_ms, 1)})"
        on_cpu = "–" if c.models_on_cpu_after_stop is None else ("yes" if c.models_on_cpu_after_stop else "NO")
        mib = " / ".join(_format(c.gpu_mib.get(k), 0) for k in ("fresh", "after stop", "after OOM"))
        after_stop = diff(c.after_stop_max_diff if c.two_pipelines_max_diff is None else c.two_pipelines_max_diff)
        note = c.reason.replace("|", "/")
        if c.flags.split(",")[0] in REFUSED:
            note = f"refused at start by app.py; {note or 'ran here'}"
        lines.append(
            f"| {c.flags} | {c.status} | {stop} | {after_stop} | {on_cpu} | {c.oom_key or '–'} | "
            f"{diff(c.after_oom_max_diff)} | {mib} | {diff(c.graphs_after_first_job)} | {diff(c.vs_plain_max_diff)} "
            f"| {note} |"
        )
    lines += [
        "",
        'Rows "N pipelines": job B drawn on the pool\'s pipelines at once (column "B after stop" holds their max Δ',
        "against one fresh pipeline). Random weights: the pictures are noise, which compares as well as pictures.",
    ]
    return "\n".join(lines) + "\n"


def main_correctness(args: argparse.Namespace, device: torch.device, dtype: torch.dtype, meta: dict) -> int:
    sets = _flag_sets(args.cache_threshold)
    width_b, height_b = _other_size(args.width, args.height)
    meta = {**meta, "steps": args.check_steps, "width_b": width_b, "height_b": height_b}
    checks: list[Check] = []
    pictures: dict[str, np.ndarray] = {}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def write() -> str:
        markdown = correctness_markdown(meta, checks)
        Path(f"{args.out}.md").write_text(markdown, encoding="utf-8")
        report = {**meta, "checks": [asdict(c) for c in checks]}
        Path(f"{args.out}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        return markdown

    names = ["plain", *[n for n in args.sets if n != "plain"]] if "plain" in args.sets else args.sets
    for name in names:
        print(f"[gpu_benchmark] correctness: {name} ...", file=sys.stderr, flush=True)
        fast = sets[name]
        if fast.offload != "none" and device.type != "cuda":
            checks.append(Check(name, status="skipped", reason="skipped: needs CUDA"))
        else:
            try:
                check, pictures[name] = run_check(name, fast, args, device, dtype, pictures.get("plain"))
            except Exception as error:  # a failing flag set is a result; the others still run
                traceback.print_exc()
                check = Check(name, status="failed", reason=f"{type(error).__name__}: {error}".splitlines()[0][:300])
            checks.append(check)
        _free_memory(device)
        write()
    if device.type == "cuda" and torch.cuda.device_count() >= 2:
        pool = [torch.device(f"cuda:{i}") for i in range(torch.cuda.device_count())]
    else:
        pool = [device, device]  # one device: two pipelines on it, as --concurrency 2 (or --devices cpu,cpu)
    for name in [n for n in ("plain", "cache") if n in pictures]:
        try:
            checks.append(run_two_pipelines(name, sets[name], args, pool, dtype, pictures[name]))
        except Exception as error:
            traceback.print_exc()
            checks.append(Check(f"{name}, 2 pipelines", status="failed", reason=f"{type(error).__name__}: {error}"))
        _free_memory(device)
    print(write())
    return 0 if all(c.status in ("ok", "skipped") or c.flags in REFUSED for c in checks) else 1


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
    parser.add_argument(
        "--model",
        choices=("cogview4", "glm-image"),
        default="cogview4",
        help="which family to measure (default cogview4); glm-image: variants plain and offload",
    )
    parser.add_argument("--steps", type=int, help="default 50 for CogView4, 30 for GLM-Image (their READMEs)")
    parser.add_argument("--size", type=_size, default=(1024, 1024), help="WIDTHxHEIGHT, default 1024x1024")
    parser.add_argument(
        "--variants",
        help=f"comma-separated, from {','.join(_variants(DEFAULT_CACHE_THRESHOLD))} (CogView4) or "
        f"{','.join(GLM_VARIANTS)} (GLM-Image); default all",
    )
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per variant, after one warm-up")
    parser.add_argument("--cache-threshold", type=float, default=DEFAULT_CACHE_THRESHOLD)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"writes OUT.md and OUT.json (default {DEFAULT_OUT.name}, {DEFAULT_GLM_OUT.name}, "
        f"{DEFAULT_CORRECTNESS_OUT.name})",
    )
    parser.add_argument("--correctness", action="store_true", help="the correctness pass instead of the timings")
    parser.add_argument("--check-steps", type=int, default=8, help="steps of each correctness job (default 8)")
    parser.add_argument(
        "--sets",
        default=",".join(_flag_sets(DEFAULT_CACHE_THRESHOLD)),
        help=f"correctness flag sets, from {','.join(_flag_sets(DEFAULT_CACHE_THRESHOLD))}",
    )
    args = parser.parse_args(argv)
    if args.out is None and args.correctness:
        args.out = DEFAULT_CORRECTNESS_OUT
    args.sets = [name.strip() for name in args.sets.split(",") if name.strip()]
    unknown_sets = [name for name in args.sets if name not in _flag_sets(DEFAULT_CACHE_THRESHOLD)]
    if unknown_sets or not args.sets:
        parser.error(f"unknown flag set(s) {unknown_sets}")
    if args.check_steps < 2:
        parser.error("--check-steps must be at least 2 (a job is stopped midway)")
    args.width, args.height = args.size
    glm = args.model == "glm-image"
    if args.steps is None:
        args.steps = 30 if glm else 50
    if args.out is None:
        args.out = DEFAULT_GLM_OUT if glm else DEFAULT_OUT
    if args.variants is None:
        args.variants = ",".join(GLM_VARIANTS if glm else DEFAULT_VARIANTS)
    args.variants = [name.strip() for name in args.variants.split(",") if name.strip()]
    if glm and (args.width % 32 or args.height % 32):
        parser.error(f"GLM-Image sizes are multiples of 32, got {args.width}x{args.height}")
    known = GLM_VARIANTS if glm else _variants(args.cache_threshold)
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
    if args.model == "glm-image":
        return glm_main(args, device, dtype)
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
    if args.correctness:
        return main_correctness(args, device, dtype, meta)
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


# GLM-Image ------------------------------------------------------------------------------------------------------

# zai-org/GLM-Image's shapes. The AR model (GlmImageForConditionalGeneration, ~9B with its vision encoder and VQ
# tokenizer) is transformers' GlmImageConfig() with GLM-4's partial rotary embedding (below). The DiT is the
# ~7B single-stream decoder (4096 wide, 30 layers); the glyph encoder is a ByT5-small encoder; the VAE has 16 latent
# channels and 4 levels (factor 8).
GLM_FULL_TRANSFORMER = {
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 30,
    "attention_head_dim": 128,
    "num_attention_heads": 32,
    "text_embed_dim": 1472,
    "time_embed_dim": 512,
    "condition_dim": 256,
    "prior_vq_quantizer_codebook_size": 16384,
}
GLM_FULL_GLYPH_ENCODER = {
    "vocab_size": 384,
    "d_model": 1472,
    "d_kv": 64,
    "d_ff": 3584,
    "num_layers": 12,
    "num_heads": 6,
    "feed_forward_proj": "gated-gelu",
}
GLM_FULL_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 16,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "latents_mean": [0.0] * 16,
    "latents_std": [1.0] * 16,
}
GLM_VARIANTS = {
    "plain": Variant("plain", FastPaths(), "no fast path: pipe.to(device)"),
    "offload": Variant("offload", FastPaths(offload="model"), "model CPU offload"),
}
GLM_PROMPT = 'A photo of a red fox reading a newspaper in a cafe, a sign that reads "GLM Image", soft morning light'
GLM_EDIT_PROMPT = "Make it a watercolour painting, keep the composition"
GLM_GUIDANCE = 1.5


@dataclass
class GlmTask:
    """One timed generation: total seconds, its planning (AR) and denoising (DiT + VAE) parts, peak memory."""

    seconds: float
    planning_seconds: float
    denoising_seconds: float
    ar_forward_passes: int  # about one per image token written
    peak_memory_gib: float | None


@dataclass
class GlmResult:
    variant: str
    description: str
    status: str  # "ok", "failed" or "skipped"
    reason: str = ""
    setup_seconds: float | None = None
    warmup_seconds: float | None = None
    text_to_image: GlmTask | None = None
    edit: GlmTask | None = None


def build_glm_pipeline(shrunk: bool, device: torch.device, dtype: torch.dtype) -> GlmImagePipeline:
    """A GlmImagePipeline with the real component classes and random weights on ``device``.

    Shrunk: the tiny-glm model of the app. Full: every weight created in place on ``device`` (meta device, then
    ``to_empty`` and ``normal_``). Random AR weights would also write the special tokens the vision vocabulary holds
    above the VQ codebook (end of image among them), which the trained model never writes inside a picture: they are
    suppressed, so every plan is full length and valid, as with the real weights.
    """
    if shrunk:
        pipe = GlmImagePipeline.from_pretrained(ensure_tiny_glm_model(), dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        return pipe
    from transformers import (
        ByT5Tokenizer,
        GlmImageConfig,
        GlmImageForConditionalGeneration,
        GlmImageProcessor,
        T5Config,
        T5EncoderModel,
    )
    from transformers.models.glm_image.image_processing_pil_glm_image import GlmImageImageProcessorPil

    # transformers' default text config rotates the whole head (128), which its own default mrope sections (8, 12, 12:
    # 32 frequencies, i.e. 64 rotated dims) do not fit: the H200 run failed there. GLM-4-9B-0414, the AR model's
    # base, rotates half of each head (partial_rotary_factor 0.5), which fits.
    rope = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
    config = GlmImageConfig(text_config={"rope_parameters": rope})
    with init_empty_weights(include_buffers=False):
        vision_language_encoder = GlmImageForConditionalGeneration(config)
        text_encoder = T5EncoderModel(T5Config(**GLM_FULL_GLYPH_ENCODER))
        transformer = GlmImageTransformer2DModel(**GLM_FULL_TRANSFORMER)
        vae = AutoencoderKL(**GLM_FULL_VAE)
    for module in (vision_language_encoder, text_encoder, transformer, vae):
        _materialize(module, device, dtype)
        module.eval()
    codebook = GLM_FULL_TRANSFORMER["prior_vq_quantizer_codebook_size"]
    vision_language_encoder.generation_config.suppress_tokens = list(
        range(codebook, config.text_config.vision_vocab_size)
    )
    processor = GlmImageProcessor(
        image_processor=GlmImageImageProcessorPil(
            patch_size=_PATCH, temporal_patch_size=1, merge_size=1, min_pixels=512 * 512, max_pixels=2048 * 2048
        ),
        tokenizer=_ar_tokenizer(),
        chat_template=_CHAT_TEMPLATE,
    )
    pipe = GlmImagePipeline(
        tokenizer=ByT5Tokenizer(),
        processor=processor,
        text_encoder=text_encoder,
        vision_language_encoder=vision_language_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_glm_task(pipe: GlmImagePipeline, device: torch.device, args: argparse.Namespace, edit: bool) -> GlmTask:
    picture = None
    if edit:
        rng = torch.Generator().manual_seed(SEED)
        pixels = torch.randint(0, 256, (args.height, args.width, 3), generator=rng, dtype=torch.uint8)
        picture = Image.fromarray(pixels.numpy())
    marks: dict[str, float] = {}
    passes = [0]
    counter = pipe.vision_language_encoder.register_forward_pre_hook(lambda *_: passes.__setitem__(0, passes[0] + 1))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _synchronize(device)
    start = time.perf_counter()
    try:
        run_glm_image(
            pipe,
            prompt=GLM_EDIT_PROMPT if edit else GLM_PROMPT,
            images=[picture] if picture is not None else (),
            width=args.width,
            height=args.height,
            num_inference_steps=args.steps,
            guidance_scale=GLM_GUIDANCE,
            seed=SEED,
            on_phase=lambda phase: marks.__setitem__(phase, time.perf_counter()),
        )
        _synchronize(device)
    finally:
        counter.remove()
    end = time.perf_counter()
    return GlmTask(
        seconds=end - start,
        planning_seconds=marks[DENOISING] - marks[PLANNING],
        denoising_seconds=end - marks[DENOISING],
        ar_forward_passes=passes[0],
        peak_memory_gib=_peak_gib(device),
    )


def run_glm_variant(variant: Variant, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> GlmResult:
    """Build, place with the variant's fast paths, warm up (512² or the size, 2 steps), then one text-to-image and
    one edit from a picture of the same size, timed."""
    result = GlmResult(variant.name, variant.description, status="ok")
    _free_memory(device)
    start = time.perf_counter()
    pipe = build_glm_pipeline(args.shrunk, device, dtype)
    if variant.fast.offload != "none":
        pipe.to("cpu")  # as after from_pretrained: offload never moves the whole pipeline to the GPU first
        _free_memory(device)
    prepare_pipeline(pipe, device, variant.fast)
    result.setup_seconds = time.perf_counter() - start

    start = time.perf_counter()
    warm = min(args.width, 512), min(args.height, 512)
    run_glm_image(
        pipe, prompt="warm-up", width=warm[0], height=warm[1], num_inference_steps=2, guidance_scale=1.5, seed=0
    )
    _synchronize(device)
    result.warmup_seconds = time.perf_counter() - start
    result.text_to_image = run_glm_task(pipe, device, args, edit=False)
    result.edit = run_glm_task(pipe, device, args, edit=True)
    return result


def glm_to_markdown(meta: dict, results: list[GlmResult]) -> str:
    lines = [
        f"# GLM-Image on the GPU — {meta['device_name']}",
        "",
        (
            f"{meta['date']} · {meta['model']} · {meta['dtype']} · {meta['width']}x{meta['height']}, "
            f"{meta['steps']} steps, guidance {GLM_GUIDANCE}, one timed run per task after a 2-step warm-up · "
            f"torch {meta['torch']} · diffusers {meta['diffusers']} · transformers {meta['transformers']}"
        ),
        "",
        (
            "| variant | what | status | task | s/image | planning (AR) s | denoising + decode s | AR passes "
            "| peak GPU memory (GiB) | setup (s) | note |"
        ),
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        tasks = [("text-to-image", r.text_to_image), ("edit (1 picture)", r.edit)]
        if r.status != "ok":
            tasks = [("–", None)]
        for name, task in tasks:
            seconds = planning = denoising = memory = None
            passes = "–"
            if task is not None:
                seconds, planning, denoising = task.seconds, task.planning_seconds, task.denoising_seconds
                memory, passes = task.peak_memory_gib, str(task.ar_forward_passes)
            lines.append(
                f"| {r.variant} | {r.description} | {r.status} | {name} | {_format(seconds)} | {_format(planning)} | "
                f"{_format(denoising)} | {passes} | {_format(memory)} | {_format(r.setup_seconds)} | "
                f"{r.reason.replace('|', '/')} |"
            )
    lines += [
        "",
        "Random weights: speed and memory are those of the real model (the AR model writes the full token grid:",
        "~256 preview tokens plus one per 32x32 pixels for text-to-image, one per 32x32 pixels for an edit). Peak",
        "memory is torch.cuda.max_memory_allocated during each task. The README of zai-org/GLM-Image gives, on one",
        "H100: 1024² 64 s / 38 GB; image-to-image 1024² 59 s / 38 GB.",
    ]
    return "\n".join(lines) + "\n"


def glm_main(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> int:
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "model": "GLM-Image, tiny-glm shapes" if args.shrunk else "GLM-Image shapes (full size), random weights",
        "dtype": str(dtype).removeprefix("torch."),
        "width": args.width,
        "height": args.height,
        "steps": args.steps,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": _package_version("diffusers"),
        "transformers": _package_version("transformers"),
    }
    results: list[GlmResult] = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.variants:
        variant = GLM_VARIANTS[name]
        print(f"[gpu_benchmark] glm-image {name}: {variant.description} ...", file=sys.stderr, flush=True)
        if variant.fast.offload != "none" and device.type != "cuda":
            result = GlmResult(name, variant.description, status="skipped", reason="skipped: needs CUDA")
        else:
            try:
                result = run_glm_variant(variant, args, device, dtype)
            except Exception as error:  # a failing variant is a result; the others still run
                traceback.print_exc()
                reason = f"{type(error).__name__}: {error}".splitlines()[0][:300]
                result = GlmResult(name, variant.description, status="failed", reason=reason)
        _free_memory(device)
        results.append(result)
        markdown = glm_to_markdown(meta, results)
        Path(f"{args.out}.md").write_text(markdown, encoding="utf-8")
        report = {**meta, "results": [asdict(r) for r in results]}
        Path(f"{args.out}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
