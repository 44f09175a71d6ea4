"""Loading the pipeline once, in the background: which model, which dtype, and a clear reason when it fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

from glmimage.errors import ModelNotReady
from glmimage.limits import DEFAULT_MODEL
from glmimage.models.accel import FastPaths
from glmimage.models.loading import (
    ModelState,
    PipelineLoader,
    choose_dtype,
    choose_model,
    failure_key,
    warmup_jobs,
    worker_names,
)
from glmimage.models.tiny import TINY_MODEL_NAME
from glmimage.requests import GenerationRequest

ROOT = Path(__file__).resolve().parent.parent


def test_without_cuda_and_without_a_model_the_tiny_one_is_chosen_and_flagged_as_automatic():
    choice = choose_model(None, cuda_available=False)
    assert (choice.name, choice.is_tiny, choice.auto_tiny) == (TINY_MODEL_NAME, True, True)


def test_with_cuda_and_without_a_model_the_real_one_is_chosen():
    choice = choose_model(None, cuda_available=True)
    assert (choice.name, choice.is_tiny, choice.auto_tiny) == (DEFAULT_MODEL, False, False)


@pytest.mark.parametrize("cuda", [True, False])
def test_an_explicit_model_is_kept_with_or_without_cuda(cuda):
    assert choose_model("/models/cogview4", cuda).name == "/models/cogview4"
    assert choose_model(DEFAULT_MODEL, cuda).is_tiny is False
    tiny = choose_model(TINY_MODEL_NAME, cuda)
    assert tiny.is_tiny and not tiny.auto_tiny


@pytest.mark.parametrize(
    "requested, device, dtype",
    [
        ("auto", "cuda", "bfloat16"),
        ("auto", "cpu", "float32"),
        ("float32", "cuda", "float32"),
        ("bfloat16", "cpu", "bfloat16"),
    ],
)
def test_dtype_auto_is_bfloat16_on_cuda_and_float32_on_cpu_and_an_explicit_one_is_kept(requested, device, dtype):
    assert choose_dtype(requested, device) == dtype


@pytest.mark.parametrize(
    "exc, model, key",
    [
        (FileNotFoundError("no such file"), "/models/cogview4", "load.bad_path"),
        (OSError("anything"), "/no/such/folder", "load.bad_path"),
        (OSError("anything"), "./relative-missing", "load.bad_path"),
        (ValueError("neither a valid local path nor a valid repo id"), "no-such-folder", "load.bad_path"),
        (LocalEntryNotFoundError("cannot find the requested files in the local cache"), DEFAULT_MODEL, "load.no_hub"),
        (OfflineModeIsEnabled("offline mode is enabled"), DEFAULT_MODEL, "load.no_hub"),
        (
            OSError("Cannot load model THUDM/CogView4-6B: the model is not fully cached locally"),
            DEFAULT_MODEL,
            "load.no_hub",
        ),
        (ConnectionError("Max retries exceeded: Name or service not known"), DEFAULT_MODEL, "load.no_hub"),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), DEFAULT_MODEL, "load.oom"),
        (RuntimeError("CUDA error: out of memory"), DEFAULT_MODEL, "load.oom"),
        (RuntimeError("shape mismatch in layer 3"), DEFAULT_MODEL, "load.failed"),
        # a tiny model is built here: a file missing while building it is no wrong path the operator typed
        (FileNotFoundError("no such file"), "tiny-glm", "load.failed"),
    ],
)
def test_failure_key_says_what_to_do_for_each_kind_of_loading_error(exc, model, key):
    assert failure_key(exc, model) == key


def test_a_missing_folder_ends_failed_with_the_reason_and_wait_raises_model_not_ready(tmp_path):
    missing = str(tmp_path / "no-model-here")
    loader = PipelineLoader(missing, warmup=False).start()
    with pytest.raises(ModelNotReady) as caught:
        loader.wait(60)
    assert loader.state is ModelState.FAILED
    assert loader.error_key == caught.value.key == "load.bad_path"
    assert "no-model-here" in loader.error_detail and caught.value.detail == loader.error_detail
    with pytest.raises(ModelNotReady):
        loader.wait(0)  # it stays failed: every later request gets the same reason


def test_an_uncached_hub_model_while_offline_ends_failed_with_no_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loader = PipelineLoader("glmimage-tests/not-a-cached-model", warmup=False).start()
    with pytest.raises(ModelNotReady) as caught:
        loader.wait(60)
    assert caught.value.key == "load.no_hub"


def test_wait_before_loading_finishes_raises_timeout():
    loader = PipelineLoader(TINY_MODEL_NAME, warmup=False)  # never started
    assert loader.state is ModelState.LOADING
    with pytest.raises(ModelNotReady) as caught:
        loader.wait(0.01)
    assert caught.value.key == "load.timeout"


def test_the_tiny_model_loads_once_in_one_dtype_and_every_caller_gets_the_same_pipeline():
    loader = PipelineLoader(TINY_MODEL_NAME, warmup=True).start()
    pipe = loader.wait(120)
    assert loader.state is ModelState.READY
    assert loader.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert loader.dtype_name == choose_dtype("auto", loader.device.type)
    assert loader.load_seconds is not None and loader.load_seconds > 0
    assert loader.wait(0) is pipe
    assert loader.start() is loader and loader.wait(0) is pipe  # starting again loads nothing new
    dtype = getattr(torch, loader.dtype_name)
    assert pipe.transformer.dtype == pipe.text_encoder.dtype == pipe.vae.dtype == dtype


def test_app_help_lists_every_flag_and_the_environment_prefix():
    result = subprocess.run(
        [sys.executable, "app.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    for flag in (
        "--model",
        "--dtype",
        "--offload",
        "--compile",
        "--cache",
        "--quantize",
        "--warmup",
        "--host",
        "--port",
        "--concurrency",
        "--devices",
        "--max-queue",
        "--max-jobs-per-client",
        "--rate-limit",
        "--trusted-proxies",
        "--max-sessions",
        "--session-ttl",
        "--file-ttl",
        "--log-prompts",
    ):
        assert flag in result.stdout, flag
    assert "GLMIMAGE_" in result.stdout


# ---- the pool and the warm-up ----------------------------------------------------------------------------------


def test_worker_names_are_distinct_and_name_the_device():
    assert worker_names(["cuda:0", "cuda:1"]) == ["cuda:0", "cuda:1"]
    assert worker_names(["cpu", "cpu"]) == ["cpu:0", "cpu:1"]
    assert worker_names(["cuda:0", "cuda:1", "cuda:0", "cuda:1"]) == ["cuda:0#0", "cuda:1#0", "cuda:0#1", "cuda:1#1"]


def test_a_device_this_machine_lacks_fails_the_load_with_its_own_reason():
    loader = PipelineLoader(TINY_MODEL_NAME, warmup=False, devices=["cuda:7"]).start()
    with pytest.raises(ModelNotReady) as caught:
        loader.wait(60)
    assert caught.value.key == loader.error_key == "load.bad_device"
    assert "cuda:7" in loader.error_detail


def test_with_compile_the_warm_up_is_the_default_request_with_guidance_and_then_a_batch():
    default = GenerationRequest(prompt="any")
    first, batch = warmup_jobs(FastPaths(compile=True))
    assert (first.width, first.height, first.num_images) == (default.width, default.height, default.num_images)
    assert first.guidance_scale == default.guidance_scale > 1  # classifier-free guidance: the same step path
    assert batch.num_images > 1 and batch.guidance_scale == default.guidance_scale
    (small,) = warmup_jobs(FastPaths())
    assert small.guidance_scale == default.guidance_scale


def test_the_loader_says_warming_up_while_the_warm_up_runs_on_every_worker():
    states: list[tuple[ModelState, str]] = []

    class Watched(PipelineLoader):
        def warm_up(self) -> None:
            states.extend((self.state, worker.name) for worker in self.workers)
            super().warm_up()

    loader = Watched(TINY_MODEL_NAME, warmup=True, devices=["cpu", "cpu"]).start()
    loader.wait(120)
    assert states == [(ModelState.WARMING, "cpu:0"), (ModelState.WARMING, "cpu:1")]
    assert loader.state is ModelState.READY


def test_two_models_loading_at_once_in_one_process_both_load():
    """from_pretrained builds each model under accelerate's ``init_empty_weights``, which patches torch's module
    class for the whole process: two loads on two threads at once left one model's weights on the meta device."""
    from glmimage.models.tiny_glm import TINY_GLM_MODEL_NAME

    for _attempt in range(3):
        loaders = [PipelineLoader(name, warmup=False).start() for name in (TINY_MODEL_NAME, TINY_GLM_MODEL_NAME)]
        for loader in loaders:
            assert loader.wait(120) is not None, loader.error_detail
            assert loader.state is ModelState.READY
