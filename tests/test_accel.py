"""The GPU fast paths (glmimage.models.accel), run for real on the tiny CogView4 pipeline on CPU."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from diffusers import CogView4Pipeline, FirstBlockCacheConfig
from PIL import Image

from glmimage.models.accel import FastPaths, pipelines_for, prepare_pipeline, token_count

CPU = torch.device("cpu")
SIZE = 512
STEPS = 2
SEED = 0
SHORT_PROMPT = "a cat"
MEDIUM_PROMPT = "a photo of an astronaut riding a horse on mars"
CHINESE_PROMPT = "一只可爱的猫坐在沙发上"


@pytest.fixture
def pipe(tiny_model_path) -> CogView4Pipeline:
    """A fresh pipeline per test: prepare_pipeline changes it in place (tiny_model_path: tests/conftest.py)."""
    pipe = CogView4Pipeline.from_pretrained(tiny_model_path, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generate(pipe: CogView4Pipeline, size: tuple[int, int] = (SIZE, SIZE), **inputs) -> Image.Image:
    width, height = size
    result = pipe(
        height=height, width=width, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(SEED), **inputs
    )
    return result.images[0]


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def _prompt_with_tokens(pipe: CogView4Pipeline, at_least: int) -> str:
    prompt = MEDIUM_PROMPT
    while token_count(pipe.tokenizer, prompt) < at_least:
        prompt += ", " + MEDIUM_PROMPT
    return prompt


def _assert_image(image: Image.Image) -> None:
    assert isinstance(image, Image.Image)
    assert image.size == (SIZE, SIZE)


# FastPaths


def test_fast_paths_default_to_everything_off():
    fast = FastPaths()
    assert (fast.offload, fast.compile, fast.cache_threshold, fast.quantize) == ("none", False, 0.0, "none")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"offload": "gpu"}, "Unknown offload mode 'gpu'"),
        ({"offload": "Model"}, "Unknown offload mode 'Model'"),
        ({"quantize": "int4"}, "Unknown quantize mode 'int4'"),
        ({"quantize": "fp8"}, "Unknown quantize mode 'fp8'"),
        ({"cache_threshold": -0.1}, "cache_threshold must be 0"),
        ({"cache_threshold": math.nan}, "cache_threshold must be 0"),
    ],
)
def test_fast_paths_reject_unknown_modes_and_negative_threshold(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FastPaths(**kwargs)


@pytest.mark.parametrize("offload", ["model", "sequential"])
def test_offload_on_cpu_raises_needs_cuda_error_before_touching_the_pipeline(pipe, offload):
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        prepare_pipeline(pipe, CPU, FastPaths(offload=offload, quantize="int8"))
    assert not pipe.transformer.is_cache_enabled
    assert not pipe.vae.use_tiling
    assert type(pipe.transformer.transformer_blocks[0].attn1.to_q.weight) is torch.nn.Parameter  # not quantized


def test_plain_prepare_turns_on_vae_slicing_and_tiling_and_generates(pipe):
    prepare_pipeline(pipe, CPU, FastPaths())
    assert pipe.vae.use_slicing and pipe.vae.use_tiling
    assert not pipe.transformer.is_cache_enabled
    assert pipe.device == CPU
    _assert_image(_generate(pipe, prompt=SHORT_PROMPT))


# First-block cache


def _count_full_transformer_passes(pipe: CogView4Pipeline) -> list[int]:
    """Count the passes that run the last transformer block: the first-block cache skips it on a cache hit."""
    calls = [0]

    def count(module, args):
        calls[0] += 1

    pipe.transformer.transformer_blocks[-1].attn1.register_forward_pre_hook(count)
    return calls


def test_cache_threshold_enables_first_block_cache_and_generates(pipe):
    prepare_pipeline(pipe, CPU, FastPaths(cache_threshold=0.2))
    assert pipe.transformer.is_cache_enabled
    assert isinstance(pipe.transformer._cache_config, FirstBlockCacheConfig)
    assert pipe.transformer._cache_config.threshold == 0.2
    _assert_image(_generate(pipe, prompt=SHORT_PROMPT))


def test_cache_skips_the_remaining_blocks_when_steps_are_similar(pipe):
    # A huge threshold makes every step after the first a cache hit, for the cond and the uncond pass alike.
    prepare_pipeline(pipe, CPU, FastPaths(cache_threshold=1e9))
    full_passes = _count_full_transformer_passes(pipe)
    _assert_image(_generate(pipe, prompt=SHORT_PROMPT))
    assert full_passes[0] == 2  # step 0 only: cond + uncond
    # A generation that runs to its end resets the cache (maybe_free_model_hooks at the end of the call).
    _generate(pipe, prompt=SHORT_PROMPT)
    assert full_passes[0] == 4


def test_without_cache_every_step_runs_all_blocks(pipe):
    prepare_pipeline(pipe, CPU, FastPaths())
    full_passes = _count_full_transformer_passes(pipe)
    _generate(pipe, prompt=SHORT_PROMPT)
    assert full_passes[0] == 2 * STEPS


# int8


def test_int8_without_torchao_raises_a_clear_import_error(pipe, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)  # makes `import torchao...` raise ImportError
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    with pytest.raises(ImportError, match="int8 quantization needs torchao"):
        prepare_pipeline(pipe, CPU, FastPaths(quantize="int8"))


def test_int8_quantizes_transformer_and_text_encoder_weights_and_generates(pipe):
    # torchao is a test dependency (tests/run.sh installs it); the app itself needs it only for --quantize int8.
    prepare_pipeline(pipe, CPU, FastPaths(quantize="int8"))
    transformer_weight = pipe.transformer.transformer_blocks[0].attn1.to_q.weight
    text_encoder_weight = pipe.text_encoder.layers[0].mlp.down_proj.weight
    for weight in (transformer_weight, text_encoder_weight):
        assert type(weight).__module__.startswith("torchao"), type(weight)
    assert type(pipe.vae.decoder.conv_out.weight) is torch.nn.Parameter  # the VAE stays as loaded
    _assert_image(_generate(pipe, prompt=SHORT_PROMPT))


# torch.compile


@pytest.mark.slow
def test_compiled_transformer_draws_the_plain_picture_and_new_prompt_lengths_and_sizes_do_not_recompile(
    pipe, tiny_model_path
):
    """One compile (inductor on the CPU, float32). Tolerance: at most 2 of 255 per channel of any pixel (measured:
    1), since a fused kernel may round differently; the prompts are never padded, so no pad token changes them."""
    import torch.fx.experimental._config as fx_config

    plain = CogView4Pipeline.from_pretrained(tiny_model_path, dtype=torch.float32)
    plain.set_progress_bar_config(disable=True)
    prepare_pipeline(plain, CPU, FastPaths())
    long_prompt = _prompt_with_tokens(pipe, at_least=40)  # padded to 48 tokens, where "a cat" is padded to 16
    duck_shape = fx_config.use_duck_shape
    torch._dynamo.reset()
    try:
        prepare_pipeline(pipe, CPU, FastPaths(compile=True))
        compiled = [_pixels(_generate(pipe, prompt=SHORT_PROMPT))]
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        assert graphs >= 1  # the transformer really went through torch.compile
        with torch._dynamo.config.patch(error_on_recompile=True):
            compiled.append(_pixels(_generate(pipe, prompt=long_prompt)))
            compiled.append(_pixels(_generate(pipe, prompt=SHORT_PROMPT, size=(768, 512))))
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    finally:
        torch._dynamo.reset()
        fx_config.use_duck_shape = duck_shape
    expected = [
        _pixels(_generate(plain, prompt=SHORT_PROMPT)),
        _pixels(_generate(plain, prompt=long_prompt)),
        _pixels(_generate(plain, prompt=SHORT_PROMPT, size=(768, 512))),
    ]
    for got, want in zip(compiled, expected, strict=True):
        assert got.shape == want.shape
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 2


# Pipelines for a pool of devices


def test_int8_pipelines_sharing_one_text_encoder_quantize_it_once_and_draw_the_same_picture(pipe, tiny_model_path):
    one, two = pipelines_for(pipe, [CPU, CPU], FastPaths(quantize="int8"))
    assert one.text_encoder is two.text_encoder and one.transformer is two.transformer  # no per-call state
    single = CogView4Pipeline.from_pretrained(tiny_model_path, dtype=torch.float32)
    (alone,) = pipelines_for(single, [CPU], FastPaths(quantize="int8"))
    expected = _pixels(_generate(alone, prompt=SHORT_PROMPT))
    assert np.array_equal(_pixels(_generate(one, prompt=SHORT_PROMPT)), expected)
    assert np.array_equal(_pixels(_generate(two, prompt=SHORT_PROMPT)), expected)


def test_with_cache_every_pipeline_has_a_transformer_of_its_own_with_its_own_hooks(pipe):
    one, two = pipelines_for(pipe, [CPU, CPU], FastPaths(cache_threshold=0.2))
    assert one.transformer is not two.transformer
    assert one.transformer.is_cache_enabled and two.transformer.is_cache_enabled
    assert one.vae is two.vae and one.text_encoder is two.text_encoder


# token_count


def test_token_count_of_english_and_chinese_prompts_includes_the_two_special_tokens(pipe):
    tokenizer = pipe.tokenizer
    assert token_count(tokenizer, "") == 2  # "[gMASK]<sop>"
    for prompt in (SHORT_PROMPT, MEDIUM_PROMPT, CHINESE_PROMPT):
        ids = tokenizer(prompt, add_special_tokens=True).input_ids
        assert token_count(tokenizer, prompt) == len(ids) > 2
        assert tokenizer.convert_ids_to_tokens(ids[:2]) == ["[gMASK]", "<sop>"]
    # Byte-level BPE: a Chinese character is several tokens in the tiny tokenizer, never fewer than one.
    assert token_count(tokenizer, CHINESE_PROMPT) >= len(CHINESE_PROMPT) + 2


def test_token_count_does_not_truncate_long_prompts(pipe):
    long_prompt = _prompt_with_tokens(pipe, at_least=1100)
    assert token_count(pipe.tokenizer, long_prompt) >= 1100
