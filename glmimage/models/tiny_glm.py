"""A tiny, randomly initialised GLM-Image pipeline (``--model tiny-glm``): GLM-Image with no GPU and no download.

It keeps every component class of zai-org/GLM-Image (``GlmImagePipeline``: the autoregressive
``GlmImageForConditionalGeneration`` with its vision encoder and VQ tokenizer, ``GlmImageProcessor``, the T5 glyph
encoder with ``ByT5Tokenizer``, ``GlmImageTransformer2DModel``, ``AutoencoderKL``, the flow-matching scheduler) and
the numbers that drive shapes: the real special-token ids, a VAE factor of 8 times a DiT patch of 2, equal to the
vision patch of 16, so sizes, reference pictures and the loading path (``GlmImagePipeline.from_pretrained``) behave
as with the real model. Widths and depths shrink, and the processor reads pictures of 32² to 128² pixels instead
of 512² to 2048², so an edit costs little on a CPU. It draws noise. Building is deterministic.

Adapted from ``shared/reference/make_tiny_glm_image.py`` (checked with diffusers 0.42.1, transformers 5.23).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .tiny import ensure_built, make_readable, patch_json

TINY_GLM_MODEL_NAME = "tiny-glm"
# Bump when the recipe changes, so an old cached build is not reused.
TINY_GLM_RECIPE_VERSION = "1"
_SEED = 0
# Vision patch = the processor's patch = VAE factor 8 x DiT patch 2, as in the real model; any other value breaks
# image-to-image on shapes.
_PATCH = 16
# zai-org/GLM-Image's special tokens, at their real ids (the vocabulary size comes from the model config).
_SPECIAL_TOKENS = {
    "<unk>": 0,
    "<|dit_token_16384|>": 16384,
    "<|dit_token_16385|>": 16385,
    "<|endoftext|>": 167840,
    "<pad>": 167841,
    "<sop>": 167845,
    "<eop>": 167846,
    "<|user|>": 167850,
    "<|assistant|>": 167851,
    "<|image|>": 167855,
}
_WORDS = "a photo of cat dog red cup apple table sign the on in with 0 1 2 3 4 5 6 7 8 9"
# Renders a user turn: pictures as <|image|> (the processor expands each to its grid), then the text.
_CHAT_TEMPLATE = (
    "{% for m in messages %}<|user|>{% for c in m['content'] %}{% if c['type']=='image' %}<|image|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}"
)


def _ar_tokenizer():
    """A word-level tokenizer holding the real special-token ids; unknown words read as <unk>."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = dict(_SPECIAL_TOKENS)
    for index, word in enumerate(_WORDS.split()):
        vocab[word] = 100 + index
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<|dit_token_16384|>",
        eos_token="<|dit_token_16385|>",
        padding_side="left",
        extra_special_tokens={"image_token": "<|image|>", "grid_bos_token": "<sop>", "grid_eos_token": "<eop>"},
    )


def build_tiny_glm_pipeline(out_dir: str | os.PathLike[str]) -> Path:
    """Build the tiny GLM-Image pipeline and save it with ``save_pretrained`` into ``out_dir`` (replaced)."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, GlmImagePipeline, GlmImageTransformer2DModel
    from diffusers.utils import logging as diffusers_logging
    from transformers import (
        ByT5Tokenizer,
        GlmImageConfig,
        GlmImageForConditionalGeneration,
        GlmImageProcessor,
        T5Config,
        T5EncoderModel,
    )
    from transformers.models.glm_image.image_processing_pil_glm_image import GlmImageImageProcessorPil

    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    diffusers_logging.set_verbosity_error()

    processor = GlmImageProcessor(
        image_processor=GlmImageImageProcessorPil(
            patch_size=_PATCH, temporal_patch_size=1, merge_size=1, min_pixels=32 * 32, max_pixels=128 * 128
        ),
        tokenizer=_ar_tokenizer(),
        chat_template=_CHAT_TEMPLATE,
    )
    torch.manual_seed(_SEED)
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=384,  # ByT5's: 256 bytes + 3 specials + 125 extra ids
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
        )
    ).eval()
    torch.manual_seed(_SEED)
    vision_language_encoder = GlmImageForConditionalGeneration(
        GlmImageConfig(
            text_config={
                "vocab_size": 168064,  # as the real model: the special tokens keep their ids
                "hidden_size": 32,
                "intermediate_size": 32,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "num_key_value_heads": 2,
                "max_position_embeddings": 512,
                # = the VQ codebook: every token the AR model can write is a valid prior token for the DiT
                "vision_vocab_size": 128,
                "rope_parameters": {"mrope_section": (4, 2, 2)},
            },
            vision_config={
                "depth": 2,
                "hidden_size": 32,
                "num_heads": 2,
                "image_size": 64,
                "patch_size": _PATCH,
                "intermediate_size": 32,
            },
            vq_config={"embed_dim": 32, "num_embeddings": 128, "latent_channels": 32},
        )
    ).eval()
    torch.manual_seed(_SEED)
    transformer = GlmImageTransformer2DModel(
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        text_embed_dim=32,  # the glyph encoder's d_model
        time_embed_dim=16,
        condition_dim=8,
        prior_vq_quantizer_codebook_size=128,
    )
    torch.manual_seed(_SEED)
    vae = AutoencoderKL(
        block_out_channels=(4, 8, 16, 16),  # 4 levels: vae_scale_factor 8, as in the real model
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=128,
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
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
    for module in (text_encoder, vision_language_encoder, transformer, vae):
        module.to(torch.bfloat16)  # stored like the real checkpoint; from_pretrained(dtype=...) casts
    pipe.save_pretrained(out, safe_serialization=True)
    # save_pretrained records the library of the two transformers components as "glm_image" (the module's name);
    # write the library itself, as model_index.json does for every other transformers component. Both load.
    patch_json(out / "model_index.json", "processor", ["transformers", "GlmImageProcessor"])
    patch_json(
        out / "model_index.json", "vision_language_encoder", ["transformers", "GlmImageForConditionalGeneration"]
    )
    make_readable(out)
    return out


def ensure_tiny_glm_model(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder of the tiny GLM-Image model, building it once into the cache folder."""
    return ensure_built(cache_dir, f"tiny-glm-image-v{TINY_GLM_RECIPE_VERSION}", build_tiny_glm_pipeline)
