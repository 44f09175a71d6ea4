"""Model families as data: the model folder names its pipeline, the table says what it takes, and validation, the
loader and the default size of an edit follow the table."""

from __future__ import annotations

import filecmp
import json

import pytest
import torch

from glmimage.errors import InputError, ModelNotReady
from glmimage.models.families import COGVIEW4, GLM_IMAGE, family_of_model
from glmimage.models.glm_image import run_glm_image
from glmimage.models.loading import ModelState, PipelineLoader, choose_model, failure_key
from glmimage.models.tiny import ensure_tiny_model
from glmimage.models.tiny_glm import TINY_GLM_MODEL_NAME, build_tiny_glm_pipeline, ensure_tiny_glm_model
from glmimage.requests import check_prompt_tokens, check_reference_count, validate_request
from glmimage.sizes import size_for_reference, size_problem

VALID = dict(
    prompt="a red apple",
    negative_prompt="",
    style="none",
    width=1024,
    height=1024,
    num_images=1,
    seed=7,
    randomize_seed=False,
    num_inference_steps=30,
    guidance_scale=1.5,
)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The GLM-Image warm-up writes ~500 AR tokens of tiny ops; see tests/test_glm_image.py for why one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_model_folder_names_its_family():
    assert family_of_model(ensure_tiny_model()) is COGVIEW4
    assert family_of_model(ensure_tiny_glm_model()) is GLM_IMAGE


@pytest.mark.parametrize("index", [{"_class_name": "StableDiffusionPipeline"}, None])
def test_a_folder_of_another_pipeline_is_refused_naming_the_pipelines_glm_image_runs(tmp_path, index):
    if index is not None:
        (tmp_path / "model_index.json").write_text(json.dumps(index), encoding="utf-8")
    with pytest.raises(ModelNotReady) as refused:
        family_of_model(tmp_path)
    assert refused.value.key == "load.unsupported_model"
    assert "CogView4Pipeline" in refused.value.detail and "GlmImagePipeline" in refused.value.detail
    if index is not None:
        assert "StableDiffusionPipeline" in refused.value.detail
    assert failure_key(refused.value, str(tmp_path)) == "load.unsupported_model"


def test_the_loader_reports_a_model_of_another_pipeline_as_unsupported(tmp_path):
    (tmp_path / "model_index.json").write_text('{"_class_name": "FluxPipeline"}', encoding="utf-8")
    loader = PipelineLoader(str(tmp_path), warmup=False).start()
    with pytest.raises(ModelNotReady) as refused:
        loader.wait(60)
    assert loader.state is ModelState.FAILED and refused.value.key == "load.unsupported_model"
    assert "FluxPipeline" in loader.error_detail


def test_tiny_glm_is_a_test_model_chosen_by_name():
    choice = choose_model(TINY_GLM_MODEL_NAME, cuda_available=True)
    assert choice.is_tiny and not choice.auto_tiny


def test_tiny_glm_loads_through_the_loader_as_glm_image_and_draws_the_requested_size():
    loader = PipelineLoader(TINY_GLM_MODEL_NAME, warmup=True).start()  # the warm-up runs GLM-Image too
    pipe = loader.wait(300)
    assert loader.state is ModelState.READY and loader.family is GLM_IMAGE
    assert type(pipe).__name__ == "GlmImagePipeline"
    dtype = getattr(torch, loader.dtype_name)
    assert pipe.transformer.dtype == pipe.vision_language_encoder.dtype == pipe.text_encoder.dtype == dtype
    images = run_glm_image(
        pipe, prompt="a photo of cat", width=160, height=128, num_inference_steps=2, guidance_scale=1.5, seed=1
    )
    assert [image.size for image in images] == [(160, 128)]


def test_building_tiny_glm_twice_gives_identical_files(tmp_path):
    first, second = build_tiny_glm_pipeline(tmp_path / "a"), build_tiny_glm_pipeline(tmp_path / "b")
    names = sorted(str(p.relative_to(first)) for p in first.rglob("*") if p.is_file())
    assert names == sorted(str(p.relative_to(second)) for p in second.rglob("*") if p.is_file())
    match, mismatch, errors = filecmp.cmpfiles(first, second, names, shallow=False)
    assert (mismatch, errors) == ([], [])
    index = json.loads((first / "model_index.json").read_text(encoding="utf-8"))
    assert index["_class_name"] == "GlmImagePipeline"


@pytest.mark.parametrize("family", [COGVIEW4, GLM_IMAGE])
def test_float16_is_refused_with_the_reason_and_bfloat16_and_float32_are_taken(family):
    assert "black images" in family.dtype_problem("float16")
    assert family.dtype_problem("bfloat16") is None and family.dtype_problem("float32") is None
    assert (family.default_dtype("cuda"), family.default_dtype("cpu")) == ("bfloat16", "float32")


def test_a_negative_prompt_is_refused_for_glm_image_naming_the_model_never_dropped(styles):
    with pytest.raises(InputError) as refused:
        validate_request(styles, **{**VALID, "negative_prompt": "blurry"}, family=GLM_IMAGE)
    assert refused.value.key == "error.unsupported_field"
    assert refused.value.params == {"field": "negative_prompt", "model": "GLM-Image"}
    assert "GLM-Image does not take a negative prompt" in str(refused.value)
    assert validate_request(styles, **VALID, family=GLM_IMAGE).negative_prompt == ""
    assert validate_request(styles, **{**VALID, "negative_prompt": "blurry"}).negative_prompt == "blurry"  # CogView4


def test_sizes_follow_the_family(styles):
    request = validate_request(styles, **{**VALID, "width": 2048, "height": 2048}, family=GLM_IMAGE)
    assert (request.width, request.height) == (2048, 2048)
    with pytest.raises(InputError) as refused:
        validate_request(styles, **{**VALID, "width": 2048, "height": 2048})  # CogView4: at most 2**21 pixels
    assert refused.value.key == "error.too_many_pixels" and "2,097,152" in str(refused.value)
    with pytest.raises(InputError) as refused:
        validate_request(styles, **{**VALID, "width": 1000}, family=GLM_IMAGE)
    assert refused.value.key == "error.side_multiple" and "multiples of 32" in str(refused.value)


def test_glm_image_prompts_are_not_held_to_cogview4s_token_limit():
    check_prompt_tokens("long", "", lambda text: 5000, GLM_IMAGE)  # bounded by characters only
    with pytest.raises(InputError) as refused:
        check_prompt_tokens("long", "", lambda text: 5000)
    assert refused.value.key == "error.too_many_tokens"


def test_an_edit_is_refused_by_a_model_that_cannot_edit_naming_it():
    with pytest.raises(InputError) as refused:
        check_reference_count(1, COGVIEW4)
    assert refused.value.key == "error.edit_unsupported" and refused.value.params == {"model": "CogView4"}
    assert "CogView4" in str(refused.value)


@pytest.mark.parametrize(("count", "key"), [(0, "error.no_images"), (5, "error.too_many_images")])
def test_an_edit_takes_one_to_four_pictures(count, key):
    check_reference_count(1, GLM_IMAGE)
    check_reference_count(4, GLM_IMAGE)
    with pytest.raises(InputError) as refused:
        check_reference_count(count, GLM_IMAGE)
    assert refused.value.key == key


def test_an_edit_request_says_how_many_pictures_it_took_never_where_they_are(styles):
    paths = ["/tmp/session-x/a.png", "/tmp/session-x/b.png"]
    request = validate_request(styles, **VALID, family=GLM_IMAGE, images=paths)
    assert request.images == tuple(paths)
    details = request.to_dict()
    assert details["reference_images"] == 2 and "images" not in details
    assert "/tmp/session-x" not in json.dumps(details)
    assert "reference_images" not in validate_request(styles, **VALID, family=GLM_IMAGE).to_dict()
    with pytest.raises(InputError):
        validate_request(styles, **VALID, images=paths)  # CogView4 cannot edit


@pytest.mark.parametrize(
    ("picture", "glm", "cogview4"),
    [
        ((1024, 768), (1024, 768), (1024, 768)),  # already legal: unchanged
        ((4032, 3024), (2048, 1536), (1664, 1248)),  # a 12 MP phone photo, 4:3 kept
        ((3024, 4032), (1536, 2048), (1248, 1664)),  # the same, upright
        ((300, 200), (768, 512), (768, 512)),  # small: scaled up to the shortest legal side
        ((640, 480), (672, 512), (672, 512)),  # rounded to multiples of 32
        ((100, 2000), (512, 2048), (512, 2048)),  # a 1:20 strip: the longest legal shape
    ],
)
def test_the_output_size_of_an_edit_is_the_first_pictures_fitted_to_the_familys_rules(picture, glm, cogview4):
    assert size_for_reference(*picture, GLM_IMAGE) == glm
    assert size_for_reference(*picture, COGVIEW4) == cogview4


def test_every_picture_size_gives_a_legal_output_size_close_to_its_shape():
    for width in (1, 17, 500, 513, 999, 1920, 3000, 8000):
        for height in (1, 31, 512, 777, 1080, 4000, 9000):
            for family in (COGVIEW4, GLM_IMAGE):
                fitted = size_for_reference(width, height, family)
                assert size_problem(*fitted, family.sizes) is None, (width, height, fitted)
                rules = family.sizes
                if rules.min_side / rules.max_side <= width / height <= rules.max_side / rules.min_side:
                    assert abs(fitted[0] / fitted[1] - width / height) <= 0.1 * width / height, (width, height)


def test_cache_with_glm_image_is_refused_at_load_with_the_reason():
    from glmimage.models.accel import FastPaths

    loader = PipelineLoader(TINY_GLM_MODEL_NAME, fast=FastPaths(cache_threshold=0.1), warmup=False).start()
    with pytest.raises(ModelNotReady) as refused:
        loader.wait(120)
    assert refused.value.key == "load.unsupported_option"
    assert "--cache" in loader.error_detail and "GLM-Image" in loader.error_detail


def test_the_png_parameters_of_an_edit_count_its_pictures_and_name_no_file(styles):
    from glmimage.sessions import a1111_parameters

    request = validate_request(styles, **VALID, family=GLM_IMAGE, images=["/tmp/session-x/a.png"] * 2)
    text = a1111_parameters(request.prompt, "", request, 7, "zai-org/GLM-Image", GLM_IMAGE.sampler)
    assert text.endswith("Model: zai-org/GLM-Image, Style: none, Reference images: 2")
    assert "Negative prompt" not in text and "/tmp" not in text


def test_a_style_gives_glm_image_its_prompt_template_and_no_negative_prompt(styles):
    styled = next(style_id for style_id in styles.ids if style_id != "none" and styles.get(style_id).negative_prompt)
    for_cogview4 = styles.apply(styled, "a fox", "")
    for_glm = styles.apply(styled, "a fox", "", takes_negative=GLM_IMAGE.negative_prompt)
    assert for_glm.prompt == for_cogview4.prompt and "a fox" in for_glm.prompt
    assert for_cogview4.negative_prompt and for_glm.negative_prompt == ""
