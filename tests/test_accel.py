"""The GPU fast paths (glmimage.models.accel), run for real on the tiny CogView4 pipeline on CPU."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from diffusers import CogView4Pipeline, FirstBlockCacheConfig
from PIL import Image

from glmimage.models.accel import FastPaths, bucketed_prompt_embeds, prepare_pipeline, token_count

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


def _generate(pipe: CogView4Pipeline, **inputs) -> Image.Image:
    result = pipe(
        height=SIZE, width=SIZE, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(SEED), **inputs
    )
    return result.images[0]


def _embeds(pipe: CogView4Pipeline, prompts: list[str], **kwargs) -> torch.Tensor:
    return bucketed_prompt_embeds(pipe, prompts, CPU, torch.float32, **kwargs)


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


# bucketed_prompt_embeds


def test_bucketed_embeds_shape_is_batch_bucket_hidden_for_short_and_long_prompts(pipe):
    hidden = pipe.text_encoder.config.hidden_size
    long_prompt = _prompt_with_tokens(pipe, at_least=129)
    assert _embeds(pipe, [SHORT_PROMPT]).shape == (1, 128, hidden)
    assert _embeds(pipe, [long_prompt]).shape == (1, 256, hidden)
    assert _embeds(pipe, [SHORT_PROMPT, long_prompt]).shape == (2, 256, hidden)


def test_prompts_of_different_lengths_in_the_same_bucket_give_the_same_shape(pipe):
    assert token_count(pipe.tokenizer, SHORT_PROMPT) != token_count(pipe.tokenizer, MEDIUM_PROMPT)
    assert _embeds(pipe, [SHORT_PROMPT]).shape == _embeds(pipe, [MEDIUM_PROMPT]).shape
    assert _embeds(pipe, [""]).shape == _embeds(pipe, [CHINESE_PROMPT]).shape


@pytest.mark.parametrize("prompts", [[SHORT_PROMPT], [MEDIUM_PROMPT], [CHINESE_PROMPT], [SHORT_PROMPT, MEDIUM_PROMPT]])
def test_bucketed_embeds_equal_pipeline_embeds_when_bucket_is_the_pipeline_padded_length(pipe, prompts):
    with torch.no_grad():
        expected = pipe._get_glm_embeds(prompts, 1024, CPU, torch.float32)
    padded_length = expected.shape[1]
    actual = _embeds(pipe, prompts, buckets=(padded_length, 1024))
    assert actual.shape == expected.shape
    # Left padding: the real tokens are the trailing positions.
    tokens = max(token_count(pipe.tokenizer, prompt) for prompt in prompts)
    torch.testing.assert_close(actual[:, -tokens:], expected[:, -tokens:], rtol=0, atol=0)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_bucketed_embeds_truncate_to_max_sequence_length_like_the_pipeline(pipe):
    long_prompt = _prompt_with_tokens(pipe, at_least=200)
    with torch.no_grad():
        expected = pipe._get_glm_embeds([long_prompt], 128, CPU, torch.float32)
    actual = _embeds(pipe, [long_prompt], max_sequence_length=128, buckets=(128,))
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"buckets": (100, 1024)}, "multiples of 16"),
        ({"buckets": (256, 128, 1024)}, "increasing"),
        ({"buckets": ()}, "buckets"),
        ({"buckets": (128, 256)}, "largest bucket"),
    ],
)
def test_bucketed_embeds_reject_buckets_that_do_not_fit(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _embeds(pipe, [SHORT_PROMPT], **kwargs)


def test_bucketed_embeds_reject_a_bare_string(pipe):
    with pytest.raises(ValueError, match="list of strings"):
        _embeds(pipe, SHORT_PROMPT)


def test_generation_with_bucketed_prompt_and_negative_embeds_gives_an_image(pipe):
    prepare_pipeline(pipe, CPU, FastPaths())
    image = _generate(
        pipe, prompt_embeds=_embeds(pipe, [MEDIUM_PROMPT]), negative_prompt_embeds=_embeds(pipe, ["blurry"])
    )
    _assert_image(image)


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


def test_compile_generates_and_a_prompt_in_the_same_bucket_does_not_recompile(pipe):
    torch._dynamo.reset()
    try:
        prepare_pipeline(pipe, CPU, FastPaths(compile=True))
        negative = _embeds(pipe, [""])
        _assert_image(_generate(pipe, prompt_embeds=_embeds(pipe, [SHORT_PROMPT]), negative_prompt_embeds=negative))
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        assert graphs >= 1  # the transformer really went through torch.compile

        assert token_count(pipe.tokenizer, MEDIUM_PROMPT) != token_count(pipe.tokenizer, SHORT_PROMPT)
        with torch._dynamo.config.patch(error_on_recompile=True):
            image = _generate(pipe, prompt_embeds=_embeds(pipe, [MEDIUM_PROMPT]), negative_prompt_embeds=negative)
        _assert_image(image)
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    finally:
        torch._dynamo.reset()


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
