"""benchmarks/cluster.py runs end to end in a shrunk mode and writes results with the expected fields, so the script
cannot rot (as tests/test_benchmarks_run.py does for the other app benchmarks). No speed is asserted."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from test_benchmarks_run import check_common, run_benchmark

# Not imported here: tests/test_ray_backend.py imports Ray first, with the settings the app imports it with.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="the Ray backend needs requirements-ray.txt"
)


def test_cluster_benchmark_compares_backends_and_holds_visitors_waiting(tmp_path: Path, tiny_model_path: Path):
    out = tmp_path / "results"
    data = run_benchmark(
        "cluster",
        out,
        *("--clients", "2", "--requests", "2", "--warmup", "1", "--replica-counts", "2"),
        *("--latency-jobs", "2", "--visitors", "20", "--samples", "5"),
    )
    r = data["results"]
    local, ray = r["throughput"]["configs"]
    assert (local["name"], ray["name"]) == ("local", "ray, 2 replicas")
    assert "--backend ray --replicas 2 --replica-gpus 0" in ray["server_command"]
    for config in (local, ray):
        assert config["requests"] == config["images"] == 4 and config["images_per_s"] > 0
    # Two clients at once on two replicas: both replicas worked.
    assert len(ray["jobs_per_worker"]) == 2 and all(w.startswith("ray:") for w in ray["jobs_per_worker"])
    lat = r["latency"]
    for name in ("local", "ray"):
        assert lat[name]["median_total_s"] >= lat[name]["median_model_s"] > 0
    assert lat["added_s"] == pytest.approx(lat["ray"]["median_total_s"] - lat["local"]["median_total_s"])
    c = r["capacity"]
    assert c["joined"] == 20 and not c["refused"]
    assert c["queue_length_max"] >= 20  # all of them were waiting while the page and /healthz were fetched
    assert 0 < c["page_ttfb_s"]["median"] <= c["page_ttfb_s"]["max"]
    assert 0 < c["healthz_ttfb_s"]["median"] <= c["healthz_ttfb_s"]["max"]
    assert c["rss_idle_mib"] > 50 and c["rss_waiting_mib"] > 50
    assert data["machine"]["versions"]["ray"] == "2.60.0"
    check_common(data, "cluster", out)
