"""benchmarks/gpu_benchmark.py --model glm-image runs end to end on CPU with the tiny-glm model, so the GLM-Image
part of the script cannot rot in CI (the full-size run needs a GPU)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "gpu_benchmark.py"


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    # One torch thread: the AR phase is hundreds of tiny ops, which two threads on a shared CPU slow down a lot.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(SCRIPT), "--model", "glm-image", *args]
    return subprocess.run(command, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_shrunk_cpu_run_times_text_to_image_and_an_edit_in_both_phases(tmp_path):
    out = tmp_path / "results" / "glm"
    args = ["--shrunk", "--device", "cpu", "--steps", "2", "--size", "128x128", "--out", str(out)]
    completed = _run(args, tmp_path)
    assert completed.returncode == 0, completed.stderr[-4000:]

    report = json.loads(Path(f"{out}.json").read_text(encoding="utf-8"))
    assert (report["width"], report["height"], report["steps"]) == (128, 128, 2)
    results = {r["variant"]: r for r in report["results"]}
    assert list(results) == ["plain", "offload"]  # both GLM-Image variants by default
    assert results["offload"]["status"] == "skipped" and results["offload"]["reason"] == "skipped: needs CUDA"
    plain = results["plain"]
    assert plain["status"] == "ok", plain["reason"]
    for task in (plain["text_to_image"], plain["edit"]):
        assert task["seconds"] >= task["planning_seconds"] > 0 and task["denoising_seconds"] > 0
        assert task["peak_memory_gib"] is None  # no GPU memory to measure on CPU
    # text-to-image writes a ~256-token preview before the picture's grid; an edit writes only the grid
    assert plain["text_to_image"]["ar_forward_passes"] > 256 > plain["edit"]["ar_forward_passes"] > 0

    markdown = Path(f"{out}.md").read_text(encoding="utf-8")
    assert "| plain |" in markdown and "edit (1 picture)" in markdown and "| offload |" in markdown


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--size", "1040x1024"], "multiples of 32"), (["--variants", "compile"], "unknown variant(s) ['compile']")],
)
def test_glm_image_sizes_must_be_multiples_of_32_and_variants_its_own(monkeypatch, capsys, args, message):
    spec = importlib.util.spec_from_file_location("gpu_benchmark", SCRIPT)
    benchmark = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_benchmark", benchmark)  # dataclasses look their module up there
    spec.loader.exec_module(benchmark)
    with pytest.raises(SystemExit) as exit_info:
        benchmark.parse_args(["--model", "glm-image", "--shrunk", "--device", "cpu", *args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_glm_image_defaults_to_its_readmes_30_steps_and_both_variants(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_benchmark", SCRIPT)
    benchmark = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_benchmark", benchmark)
    spec.loader.exec_module(benchmark)
    args = benchmark.parse_args(["--model", "glm-image", "--device", "cpu"])
    assert (args.steps, args.variants, args.out.name) == (30, ["plain", "offload"], "gpu_benchmark_glm")
    assert benchmark.parse_args(["--device", "cpu"]).steps == 50  # CogView4 keeps its default
