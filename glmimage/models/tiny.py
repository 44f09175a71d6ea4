"""A tiny, randomly initialised CogView4 pipeline for running GLM Image with no GPU and no download.

It keeps every component class and every shape-driving block count of THUDM/CogView4-6B (4 VAE levels, so
``vae_scale_factor`` 8; patch size 2; 16 latent channels), so the size rules and the loading path
(``CogView4Pipeline.from_pretrained``) are exactly those of the real model. Only widths and depths shrink. It
draws noise, not pictures. Building is deterministic: two builds give byte-identical folders.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

TINY_MODEL_NAME = "tiny"
# Bump when the recipe changes, so an old cached build is not reused.
TINY_RECIPE_VERSION = "1"
_SEED = 0

# GLM-4 special tokens, same strings and order as glm-4-9b's added tokens.
_SPECIAL_TOKENS = [
    "<|endoftext|>",  # pad and eos
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
]
# Only used to learn a few BPE merges. Byte-level BPE keeps the full byte alphabet, so any text encodes.
_CORPUS = [
    "a photo of an astronaut riding a horse on mars",
    "a cute cat sitting on a sofa, high quality, detailed, 4k",
    "a red apple on a wooden table, studio lighting",
    "a beautiful landscape with mountains and a lake at sunset",
    "portrait of a woman, oil painting, masterpiece",
    "blurry, low quality, ugly, deformed, watermark, text",
    "一只可爱的猫坐在沙发上",
    "一只小狗在草地上奔跑",
    "美丽的山水画,高清,细节丰富",
    "夕阳下的湖泊和群山",
    "一个宇航员在火星上骑马",
    "模糊,低质量,丑陋,水印",
]
_VOCAB_SIZE = 512


def default_cache_dir() -> Path:
    """Where the tiny model is built once: ``GLMIMAGE_CACHE_DIR`` or ``~/.cache/glmimage``."""
    base = os.environ.get("GLMIMAGE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "glmimage")
    return Path(base)


def _build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        min_frequency=2,
        special_tokens=_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    # GLM-4 prepends "[gMASK]<sop>" when add_special_tokens=True.
    tok.post_processor = processors.TemplateProcessing(
        single="[gMASK] <sop> $A",
        pair="[gMASK] <sop> $A $B:1",
        special_tokens=[("[gMASK]", tok.token_to_id("[gMASK]")), ("<sop>", tok.token_to_id("<sop>"))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=128000,
    )


def patch_json(path: Path, key: str, value: object) -> None:
    """Set one key of a JSON file that ``save_pretrained`` wrote, where it records a name the real repo does not."""
    data = json.loads(path.read_text(encoding="utf-8"))
    data[key] = value
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def build_tiny_pipeline(out_dir: str | os.PathLike[str]) -> Path:
    """Build the tiny pipeline and save it with ``save_pretrained`` into ``out_dir`` (replaced if present)."""
    import torch
    from diffusers import AutoencoderKL, CogView4Pipeline, CogView4Transformer2DModel, FlowMatchEulerDiscreteScheduler
    from diffusers.utils import logging as diffusers_logging
    from transformers import GlmConfig, GlmModel

    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    diffusers_logging.set_verbosity_error()

    tokenizer = _build_tokenizer()
    torch.manual_seed(_SEED)
    text_encoder = GlmModel(
        GlmConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,  # the pipeline reads hidden_states[-2]
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=2048,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=[tokenizer.eos_token_id],
            attention_bias=True,
        )
    ).eval()
    torch.manual_seed(_SEED)
    transformer = CogView4Transformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=8,  # 2D RoPE splits it in halves: must be divisible by 4
        num_attention_heads=2,
        text_embed_dim=32,  # the text encoder's hidden size
        time_embed_dim=16,
        condition_dim=8,
        pos_embed_max_size=128,
        sample_size=128,  # default 1024x1024, as in the real model
        rope_axes_dim=(256, 256),
    )
    torch.manual_seed(_SEED)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),  # 4 levels: vae_scale_factor 8, as in the real model
        layers_per_block=1,
        act_fn="silu",
        latent_channels=16,
        norm_num_groups=4,
        sample_size=1024,
        scaling_factor=1.0,
        force_upcast=True,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=False,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_shift=0.25, max_shift=0.75, base_image_seq_len=256, use_dynamic_shifting=True, time_shift_type="linear"
    )
    pipe = CogView4Pipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )
    for module in (text_encoder, transformer, vae):
        module.to(torch.bfloat16)  # stored like the real checkpoint; from_pretrained(dtype=...) casts
    pipe.save_pretrained(out, safe_serialization=True)
    # transformers 5 saves the tokenizer class as "TokenizersBackend"; the real repo names the public class.
    patch_json(out / "model_index.json", "tokenizer", ["transformers", "PreTrainedTokenizerFast"])
    patch_json(out / "tokenizer" / "tokenizer_config.json", "tokenizer_class", "PreTrainedTokenizerFast")
    make_readable(out)
    return out


def make_readable(folder: Path) -> None:
    """Every file of a saved tiny model readable by all (0o644), whoever built it, as the builders leave it."""
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o644)


def ensure_tiny_model(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder of the tiny model, building it once into the cache folder."""
    return ensure_built(cache_dir, f"tiny-cogview4-v{TINY_RECIPE_VERSION}", build_tiny_pipeline)


def ensure_built(cache_dir: str | os.PathLike[str] | None, folder: str, build: Callable[[Path], object]) -> Path:
    """Return ``cache_dir/folder``, calling ``build(path)`` once to save a pipeline there if it is missing.

    The build goes to a temporary sibling folder that is renamed into place, so two processes starting at once
    never see a half-written model.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / folder
    if (target / "model_index.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=root))
    try:
        build(staging / "model")
        try:
            os.replace(staging / "model", target)
        except OSError:
            if not (target / "model_index.json").is_file():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
