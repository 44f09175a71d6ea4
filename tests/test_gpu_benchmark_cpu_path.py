"""benchmarks/gpu_benchmark.py runs end to end on CPU with shrunk configs, so the script cannot rot in CI."""

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
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_shrunk_cpu_run_writes_json_and_markdown_with_positive_timings(tmp_path):
    out = tmp_path / "results" / "bench"
    # A threshold no step difference reaches: every pass after the first step is a cache hit, so the count of
    # passes that ran every block shows whether the cache really skipped work.
    args = ["--shrunk", "--device", "cpu", "--steps", "2", "--size", "512x512", "--variants", "plain,cache"]
    args += ["--cache-threshold", "1e9"]
    completed = _run([*args, "--out", str(out)], tmp_path)
    assert completed.returncode == 0, completed.stderr[-4000:]

    report = json.loads(Path(f"{out}.json").read_text(encoding="utf-8"))
    assert report["device"] == "cpu"
    assert report["torch"] and report["diffusers"] and report["date"]
    assert (report["width"], report["height"], report["steps"]) == (512, 512, 2)
    results = {r["variant"]: r for r in report["results"]}
    assert list(results) == ["plain", "cache"]
    for result in results.values():
        assert result["status"] == "ok", result["reason"]
        assert result["seconds_per_image"] > 0
        assert all(seconds > 0 for seconds in result["run_seconds"])
        assert result["peak_memory_gib"] is None  # no GPU memory to measure on CPU
        assert result["transformer_passes_per_image"] == 4  # 2 steps x (cond + uncond)
        assert 1 <= result["full_transformer_passes_per_image"] <= 4
    assert results["plain"]["full_transformer_passes_per_image"] == 4  # no cache: every pass runs every block
    assert results["cache"]["full_transformer_passes_per_image"] == 2  # step 0 only (cond + uncond)

    markdown = Path(f"{out}.md").read_text(encoding="utf-8")
    assert "| variant |" in markdown
    assert "| plain |" in markdown and "| cache |" in markdown
    assert "| variant |" in completed.stdout  # the table is printed too


def _load_benchmark_module(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_benchmark", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_a_failing_variant_is_reported_with_its_reason_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    benchmark = _load_benchmark_module(monkeypatch)
    monkeypatch.setitem(sys.modules, "torchao", None)  # int8 then fails as it does where torchao is missing
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    out = tmp_path / "bench"
    args = ["--shrunk", "--device", "cpu", "--steps", "1", "--repeats", "1", "--size", "512x512"]
    assert benchmark.main([*args, "--variants", "int8,plain", "--out", str(out)]) == 0

    results = {r["variant"]: r for r in json.loads(Path(f"{out}.json").read_text(encoding="utf-8"))["results"]}
    assert results["int8"]["status"] == "failed"
    assert "int8 quantization needs torchao" in results["int8"]["reason"]
    assert results["int8"]["seconds_per_image"] is None
    assert results["plain"]["status"] == "ok" and results["plain"]["seconds_per_image"] > 0
    assert "| int8 |" in capsys.readouterr().out


def test_offload_on_cpu_is_reported_as_skipped_needs_cuda_not_failed(tmp_path, monkeypatch):
    benchmark = _load_benchmark_module(monkeypatch)
    out = tmp_path / "bench"
    args = ["--shrunk", "--device", "cpu", "--steps", "1", "--repeats", "1", "--size", "512x512"]
    assert benchmark.main([*args, "--variants", "offload,plain", "--out", str(out)]) == 0

    results = {r["variant"]: r for r in json.loads(Path(f"{out}.json").read_text(encoding="utf-8"))["results"]}
    assert results["offload"]["status"] == "skipped"
    assert results["offload"]["reason"] == "skipped: needs CUDA"
    assert results["plain"]["status"] == "ok"  # the run goes on after a skipped variant
    assert "skipped: needs CUDA" in Path(f"{out}.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--variants", "plain,turbo"], "unknown variant(s) ['turbo']"),
        (["--size", "1000x1024"], "multiples of 16"),
        (["--size", "big"], "size must look like 1024x1024"),
        (["--steps", "0"], "--steps and --repeats must be at least 1"),
    ],
)
def test_bad_arguments_are_refused_with_a_clear_message(monkeypatch, capsys, args, message):
    benchmark = _load_benchmark_module(monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        benchmark.parse_args(["--shrunk", "--device", "cpu", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_the_correctness_pass_runs_on_cpu_and_finds_every_job_after_a_stop_or_oom_drawing_the_fresh_picture(tmp_path):
    out = tmp_path / "gpu_correctness"
    args = ["--correctness", "--shrunk", "--device", "cpu", "--size", "512x512", "--check-steps", "2"]
    completed = _run([*args, "--sets", "plain,cache,offload", "--out", str(out)], tmp_path)
    assert completed.returncode == 0, completed.stderr[-4000:]

    report = json.loads(Path(f"{out}.json").read_text(encoding="utf-8"))
    checks = {c["flags"]: c for c in report["checks"]}
    pools = ["plain, 2 pipelines (cpu,cpu)", "cache, 2 pipelines (cpu,cpu)"]
    assert list(checks) == ["plain", "cache", "offload", *pools]
    for name in ("plain", "cache"):
        check = checks[name]
        assert check["status"] == "ok", check
        assert check["after_stop_max_diff"] == 0 and check["after_oom_max_diff"] == 0
        assert check["oom_key"] == "error.oom"
        assert check["stop_to_return_ms"] >= 0
    # Stopping by raising returns before the decode; diffusers' _interrupt decodes first.
    assert checks["plain"]["interrupt_to_return_ms"] > checks["plain"]["stop_to_return_ms"]
    assert checks["offload"]["status"] == "skipped" and checks["offload"]["reason"] == "skipped: needs CUDA"
    assert all(checks[pool]["two_pipelines_max_diff"] == 0 for pool in pools)

    markdown = Path(f"{out}.md").read_text(encoding="utf-8")
    assert "| flags | status |" in markdown and "| cache | ok |" in markdown
    assert "| flags | status |" in completed.stdout
