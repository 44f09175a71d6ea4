"""GPU memory in /metrics, on a machine with a CUDA GPU (skipped elsewhere; CI has none). Needs only torch and
prometheus_client, so it also runs where the app's other packages are missing:
``python -m pytest tests/test_metrics_gpu.py --noconftest -q``."""

from __future__ import annotations

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from glmimage.metrics import LiveValues, Metrics

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
MIB = 2**20


def gpu_gauges(metrics: Metrics) -> dict[tuple[str, str], float]:
    """{(metric name, device): bytes} of the GPU memory gauges."""
    text = metrics.exposition().decode()
    return {
        (sample.name, sample.labels["device"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("glmimage_gpu_memory_")
    }


def test_gpu_memory_gauges_follow_what_torch_holds_on_each_device():
    metrics = Metrics(
        LiveValues(
            queue_length=lambda: 0,
            model_state=lambda: "ready",
            model_states=["loading", "ready", "failed"],
            maintenance=lambda: False,
            draining=lambda: False,
        )
    )
    if not torch.cuda.is_initialized():
        assert gpu_gauges(metrics) == {}  # a scrape never starts CUDA itself
    torch.cuda.init()
    before = gpu_gauges(metrics)
    devices = {device for _, device in before}
    assert devices == {str(i) for i in range(torch.cuda.device_count())}

    block = torch.empty(512 * MIB, dtype=torch.uint8, device="cuda:0")
    torch.cuda.synchronize()
    held = gpu_gauges(metrics)
    grown = held["glmimage_gpu_memory_allocated_bytes", "0"] - before["glmimage_gpu_memory_allocated_bytes", "0"]
    assert grown >= 512 * MIB
    assert held["glmimage_gpu_memory_reserved_bytes", "0"] >= held["glmimage_gpu_memory_allocated_bytes", "0"]
    total = held["glmimage_gpu_memory_total_bytes", "0"]
    assert total == torch.cuda.get_device_properties(0).total_memory
    assert 512 * MIB <= held["glmimage_gpu_memory_used_bytes", "0"] <= total
    print({name: round(value / MIB) for (name, _), value in held.items()}, "MiB")

    del block
    torch.cuda.empty_cache()
    freed = gpu_gauges(metrics)
    assert (
        freed["glmimage_gpu_memory_allocated_bytes", "0"]
        <= held["glmimage_gpu_memory_allocated_bytes", "0"] - 512 * MIB
    )
    assert freed["glmimage_gpu_memory_reserved_bytes", "0"] < held["glmimage_gpu_memory_reserved_bytes", "0"]
