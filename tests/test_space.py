"""A Hugging Face Space in one step: README.md's front matter is a valid Space configuration naming the pinned
gradio and an existing app file; on ZeroGPU the pipeline call asks for a GPU time that grows with the job (within
a cap), and elsewhere nothing is wrapped and ``spaces`` is never imported."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from glmimage import zerogpu
from glmimage.engine import LocalEngine
from glmimage.models.loading import PipelineLoader
from glmimage.requests import GenerationRequest

ROOT = Path(__file__).resolve().parents[1]
# The flavours the Hub accepts for suggested_hardware (huggingface.co/docs/hub/spaces-config-reference).
HARDWARE = {"cpu-basic", "cpu-upgrade", "t4-small", "t4-medium", "l4x1", "l4x4", "a10g-small", "a10g-large"}
HARDWARE |= {"a10g-largex2", "a10g-largex4", "a100-large"}


def front_matter() -> dict:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.match(r"---\n(.*?)\n---\n", text, re.DOTALL)
    assert match, "README.md must start with the Space's --- front matter ---"
    return yaml.safe_load(match.group(1))


def pinned(package: str) -> str:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return next(line.split("==", 1)[1].strip() for line in lines if line.startswith(f"{package}=="))


def test_the_readme_front_matter_is_a_gradio_space_on_the_pinned_gradio_with_an_existing_app_file():
    config = front_matter()
    assert config["sdk"] == "gradio"
    assert str(config["sdk_version"]) == pinned("gradio") == "6.31.0"
    assert (ROOT / config["app_file"]).is_file() and config["app_file"] == "app.py"
    assert re.fullmatch(r"3\.\d+(\.\d+)?", str(config["python_version"]))
    assert {"THUDM/CogView4-6B", "zai-org/GLM-Image"} <= set(config["models"])
    assert config["suggested_hardware"] in HARDWARE
    assert config["title"] and config["emoji"]
    assert 0 < len(config["short_description"]) <= 60  # the Hub's limit


def request(width: int = 1024, height: int = 1024, steps: int = 50, images: int = 1) -> GenerationRequest:
    return GenerationRequest(
        prompt="a cat",
        negative_prompt="",
        style="none",
        width=width,
        height=height,
        num_images=images,
        seed=0,
        randomize_seed=False,
        num_inference_steps=steps,
        guidance_scale=3.5,
    )


def seconds(**kwargs: int) -> int:
    r = request(**kwargs)
    return zerogpu.gpu_seconds(r.width, r.height, r.num_inference_steps, r.num_images)


def test_bigger_jobs_ask_for_more_gpu_time_up_to_a_cap():
    default = seconds()
    assert seconds(width=512, height=512, steps=1) < seconds(width=512, height=512, steps=20) < default
    assert default < seconds(width=2048, height=1024) and default < seconds(images=2) and default < seconds(steps=80)
    assert isinstance(default, int) and default > 0
    largest = seconds(width=2048, height=1024, steps=100, images=4)
    assert largest == zerogpu.MAX_S == seconds(width=2048, height=1024, steps=100, images=3)  # capped
    assert seconds(width=512, height=512, steps=1) >= zerogpu.BASE_S  # even the smallest job gets its fixed part


@pytest.fixture
def fake_spaces(monkeypatch):
    """A stand-in for the `spaces` package, which exists only on Hugging Face: records what spaces.GPU got."""
    module = types.ModuleType("spaces")
    module.calls = []

    def gpu(*, duration):
        def wrap(fn):
            module.calls.append((fn, duration))

            def wrapped(*args, **kwargs):
                return ("wrapped", fn(*args, **kwargs))

            return wrapped

        return wrap

    module.GPU = gpu
    monkeypatch.setitem(sys.modules, "spaces", module)
    return module


def test_without_zerogpu_the_generation_call_is_not_wrapped(fake_spaces, monkeypatch):
    monkeypatch.delenv(zerogpu.ENV, raising=False)
    engine = LocalEngine(PipelineLoader("tiny", warmup=False), styles=None)  # type: ignore[arg-type]  # never started
    assert engine._generate == engine.generate
    assert fake_spaces.calls == []
    assert zerogpu.on_zero_gpu(len, {zerogpu.ENV: "false"}) is len


def test_on_zerogpu_the_generation_call_runs_under_spaces_gpu_with_the_jobs_duration(fake_spaces, monkeypatch):
    monkeypatch.setenv(zerogpu.ENV, "true")
    engine = LocalEngine(PipelineLoader("tiny", warmup=False), styles=None)  # type: ignore[arg-type]  # never started
    [(fn, duration)] = fake_spaces.calls
    assert fn == engine.generate and engine._generate != engine.generate
    assert duration(request(), None, None) == seconds()
    assert duration(request(width=2048, height=1024, steps=100, images=4), None, None) == zerogpu.MAX_S


def test_app_py_imports_spaces_before_torch_on_zerogpu_only(tmp_path):
    """`spaces` must come before anything starts CUDA: a fake package records whether torch was already loaded."""
    package = tmp_path / "spaces"
    package.mkdir()
    (package / "__init__.py").write_text(
        "import sys, pathlib\n"
        f"pathlib.Path({str(tmp_path / 'seen')!r}).write_text(str('torch' in sys.modules))\n"
        "def GPU(*, duration):\n    return lambda fn: fn\n"
    )
    env = {k: v for k, v in os.environ.items() if k != zerogpu.ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    run = subprocess.run([sys.executable, str(ROOT / "app.py"), "--help"], env=env, capture_output=True, timeout=120)
    assert run.returncode == 0 and not (tmp_path / "seen").exists()
    env[zerogpu.ENV] = "true"
    run = subprocess.run([sys.executable, str(ROOT / "app.py"), "--help"], env=env, capture_output=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "seen").read_text() == "False"  # imported, and before torch
