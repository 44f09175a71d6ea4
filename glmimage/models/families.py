"""Model families as data: what each diffusers pipeline GLM Image runs can take, in one table.

A model folder says which pipeline it holds in its ``model_index.json`` (``_class_name``); that names one row
here. Validation (``glmimage/requests.py``), the defaults (``glmimage/limits.py``), the loader and the page follow
the row, so adding a family means a row here and a run function beside the pipeline's own, not edits across the UI.

This module reads JSON only: it imports neither torch nor diffusers, so the core may use the table.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelNotReady


@dataclass(frozen=True)
class SizeRules:
    """Sizes a family draws: each side from ``min_side`` to ``max_side`` and a multiple of ``multiple``, and
    width x height at most ``max_pixels``. ``max_aspect`` (long side / short side), where set, bounds pictures the
    model reads (GLM-Image's processor refuses more than 4:1)."""

    min_side: int
    max_side: int
    multiple: int
    max_pixels: int
    max_aspect: float | None = None


@dataclass(frozen=True)
class Family:
    """One row of the capability table.

    Attributes:
        key: short stable id, for logs and the API ("cogview4", "glm-image").
        pipeline_class: the diffusers class named by ``_class_name`` in ``model_index.json``.
        display_name: what the page and error messages call the model.
        hub_id: the published weights.
        negative_prompt: whether the model takes one; if not, a non-empty one is refused, never dropped.
        default_steps / steps_range, default_guidance / guidance_range: the page's defaults and what validation
            accepts.
        sizes: output size rules; default_size: the page's default.
        max_images: images per request (``num_images``).
        max_reference_images: pictures an edit may take; 0 means text-to-image only.
        max_reference_aspect: the longest picture (long side / short side) the model reads, None if any.
        max_prompt_tokens: tokens the prompt encoder reads, checked once its tokenizer is loaded; None when the
            prompt is bounded only by ``limits.MAX_PROMPT_CHARS``.
        dtypes: dtypes that draw correct pictures; refused_dtypes: (dtype, why) pairs for the others asked for.
        heavy_components: the pipeline components that hold most of the weights (what int8 quantization shrinks).
        first_block_cache: whether diffusers' first-block cache (``--cache``) supports the family's transformer.
        sampler: the scheduler's name in the PNG's A1111 ``parameters`` text.
    """

    key: str
    pipeline_class: str
    display_name: str
    hub_id: str
    negative_prompt: bool
    default_steps: int
    steps_range: tuple[int, int]
    default_guidance: float
    guidance_range: tuple[float, float]
    sizes: SizeRules
    default_size: tuple[int, int]
    max_images: int
    max_reference_images: int
    max_reference_aspect: float | None
    max_prompt_tokens: int | None
    dtypes: tuple[str, ...]
    refused_dtypes: tuple[tuple[str, str], ...]
    heavy_components: tuple[str, ...]
    first_block_cache: bool
    sampler: str = "FlowMatchEuler"

    @property
    def takes_reference_images(self) -> bool:
        return self.max_reference_images > 0

    def default_dtype(self, device_type: str) -> str:
        """bfloat16 on CUDA (both families are trained in it), float32 elsewhere (bf16 matmuls are slow on CPUs)."""
        return "bfloat16" if device_type == "cuda" else "float32"

    def dtype_problem(self, dtype: str) -> str | None:
        """Why ``dtype`` is refused for this family, or None when it draws correct pictures."""
        for refused, reason in self.refused_dtypes:
            if dtype == refused:
                return reason
        if dtype not in self.dtypes:
            return f"{self.display_name} runs in {' or '.join(self.dtypes)}, not {dtype}."
        return None


_FLOAT16 = ("float16", "it overflows in float16 and draws black images; use bfloat16 (GPU) or float32.")

COGVIEW4 = Family(
    key="cogview4",
    pipeline_class="CogView4Pipeline",
    display_name="CogView4",
    hub_id="THUDM/CogView4-6B",
    negative_prompt=True,
    # The official demo's defaults; the pipeline's own guidance default is 5.0.
    default_steps=50,
    steps_range=(1, 100),
    default_guidance=3.5,
    guidance_range=(0.0, 20.0),
    # The model card's rules; the pipeline itself only checks "divisible by 16".
    sizes=SizeRules(min_side=512, max_side=2048, multiple=32, max_pixels=2**21),
    default_size=(1024, 1024),
    max_images=4,
    max_reference_images=0,
    max_reference_aspect=None,
    max_prompt_tokens=1024,  # CogView4Pipeline's max_sequence_length
    dtypes=("bfloat16", "float32"),
    refused_dtypes=(_FLOAT16,),
    heavy_components=("transformer", "text_encoder"),
    first_block_cache=True,
)

GLM_IMAGE = Family(
    key="glm-image",
    pipeline_class="GlmImagePipeline",
    display_name="GLM-Image",
    hub_id="zai-org/GLM-Image",
    # The unconditional pass uses "" with the prior tokens dropped: there is no place for a negative prompt.
    negative_prompt=False,
    # The model README's recommended settings (the pipeline's defaults are 50 steps and 1.5).
    default_steps=30,
    steps_range=(1, 100),
    default_guidance=1.5,
    guidance_range=(0.0, 20.0),
    # README: 512² to 2048²; the pipeline checks height % 32 but width only % 4, so 32 is enforced here.
    sizes=SizeRules(min_side=512, max_side=2048, multiple=32, max_pixels=2048 * 2048),
    default_size=(1024, 1024),
    max_images=4,
    max_reference_images=4,
    # The processor refuses pictures longer than 4:1 (transformers' glm_image smart_resize).
    max_reference_aspect=4.0,
    # The AR prompt and the glyph encoder (which reads only quoted text, up to 2048 bytes) have no tighter limit
    # than the 4,000-character one every prompt has.
    max_prompt_tokens=None,
    dtypes=("bfloat16", "float32"),
    refused_dtypes=(_FLOAT16,),
    heavy_components=("vision_language_encoder", "transformer"),
    # diffusers 0.42.1 has no block registration for GlmImageTransformerBlock ("Model class ... not registered").
    first_block_cache=False,
)

FAMILIES: tuple[Family, ...] = (COGVIEW4, GLM_IMAGE)


def family_for_pipeline(pipeline_class: str) -> Family:
    """The row for a pipeline class name; a model of any other class is refused with the names GLM Image runs."""
    for family in FAMILIES:
        if family.pipeline_class == pipeline_class:
            return family
    supported = ", ".join(f.pipeline_class for f in FAMILIES)
    detail = f"the model is a {pipeline_class or 'folder without model_index.json'}; GLM Image runs {supported}"
    raise ModelNotReady("load.unsupported_model", detail, detail=detail)


def model_index_file(model: str | os.PathLike[str]) -> Path:
    """The ``model_index.json`` of a local folder, or of a hub id from the local hub cache (downloaded if the hub
    can be reached; with ``HF_HUB_OFFLINE=1`` an uncached id fails as the loader words "no hub")."""
    name = str(model)
    if os.path.isdir(name):
        return Path(name) / "model_index.json"
    if name.startswith((".", "/", "~")) or name.count("/") != 1:  # a hub id is "org/name"
        raise FileNotFoundError(f"model folder not found: {name}")
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(name, "model_index.json"))


def family_of_model(model: str | os.PathLike[str]) -> Family:
    """Which family a model folder or hub id holds, read from its ``model_index.json``."""
    index = model_index_file(model)
    try:
        pipeline_class = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
    except FileNotFoundError:
        pipeline_class = ""
    return family_for_pipeline(str(pipeline_class))


def expected_family(model: str | None, tiny_families: dict[str, Family]) -> Family:
    """The family the page is built for, known at start-up without loading anything (and without the network):
    the default model and the tiny test models by name, a published model by its hub id, a local folder or a cached
    hub id by its ``model_index.json``. An unknown hub id that is not cached yet is taken as CogView4 (the app's
    own default); the loader reads the real ``model_index.json`` and refuses a model of another family, so the page
    never offers what the model cannot do."""
    if model is None:
        return COGVIEW4
    if model in tiny_families:
        return tiny_families[model]
    for family in FAMILIES:
        if model == family.hub_id:
            return family
    if os.path.isdir(model):
        return family_of_model(model)
    if model.count("/") == 1 and not model.startswith((".", "/", "~")):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "model_index.json")
        if isinstance(cached, str):
            return family_of_model(Path(cached).parent)
    return COGVIEW4
