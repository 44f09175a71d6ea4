"""Prometheus metrics (``GET /metrics``): what an operator graphs and alerts on.

Each app has its own :class:`~prometheus_client.CollectorRegistry`, so two servers in one process never share or
clash. The service reports outcomes through the small :class:`~glmimage.service.Observer` interface; values that
exist only at scrape time (queue length, model state, GPU memory) are read when Prometheus asks.

Labels hold only fixed words (an outcome, a message key's short name, a model state, a device index): never a
prompt, a session id or an address, so the cardinality is bounded and nothing private leaves through here.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Seconds. A tiny CPU generation takes ~0.1 s, CogView4 at 2048² and 100 steps a few minutes on a GPU.
GENERATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600)
QUEUE_BUCKETS = (0.05, 0.25, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200)
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)


@dataclass(frozen=True)
class LiveValues:
    """Read at each scrape, from whoever knows them (the web layer, the loader)."""

    queue_length: Callable[[], int]
    model_state: Callable[[], str]
    model_states: Sequence[str]
    maintenance: Callable[[], bool]
    draining: Callable[[], bool]


class _LiveCollector(Collector):
    def __init__(self, live: LiveValues) -> None:
        self.live = live

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "glmimage_queue_length",
            "Generations waiting in the queue (not yet running).",
            value=self.live.queue_length(),
        )
        state = GaugeMetricFamily(
            "glmimage_model_state", "1 for the model's current state, 0 for the others.", labels=["state"]
        )
        current = self.live.model_state()
        for name in self.live.model_states:
            state.add_metric([name], 1.0 if name == current else 0.0)
        yield state
        yield GaugeMetricFamily(
            "glmimage_maintenance", "1 while the maintenance file exists.", value=float(self.live.maintenance())
        )
        yield GaugeMetricFamily(
            "glmimage_draining", "1 while the server is shutting down.", value=float(self.live.draining())
        )
        yield from gpu_memory()


def gpu_memory() -> Iterator[Metric]:
    """Memory of each CUDA device, once this process has used CUDA; nothing on machines without a GPU."""
    torch = sys.modules.get("torch")  # never imported nor CUDA started just for a scrape
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return
    allocated = GaugeMetricFamily(
        "glmimage_gpu_memory_allocated_bytes", "GPU memory held by tensors (torch).", labels=["device"]
    )
    reserved = GaugeMetricFamily(
        "glmimage_gpu_memory_reserved_bytes", "GPU memory reserved by torch's caching allocator.", labels=["device"]
    )
    used = GaugeMetricFamily(
        "glmimage_gpu_memory_used_bytes", "GPU memory in use on the device, by any process.", labels=["device"]
    )
    total = GaugeMetricFamily("glmimage_gpu_memory_total_bytes", "GPU memory of the device.", labels=["device"])
    for index in range(torch.cuda.device_count()):
        device = str(index)
        allocated.add_metric([device], float(torch.cuda.memory_allocated(index)))
        reserved.add_metric([device], float(torch.cuda.memory_reserved(index)))
        free, size = torch.cuda.mem_get_info(index)
        used.add_metric([device], float(size - free))
        total.add_metric([device], float(size))
    yield from (allocated, reserved, used, total)


class Metrics:
    """One app's metrics; implements the service's Observer."""

    def __init__(self, live: LiveValues) -> None:
        self.registry = CollectorRegistry()
        self.generations = Counter(
            "glmimage_generations",
            "Generation requests by how they ended: done, refused (before queuing or by a shutdown), failed, stopped.",
            ["outcome", "reason"],
            registry=self.registry,
        )
        self.images = Counter("glmimage_images", "Images generated.", registry=self.registry)
        self.generation_seconds = Histogram(
            "glmimage_generation_seconds",
            "Seconds the model worked on one finished generation (all its steps and images).",
            buckets=GENERATION_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait_seconds = Histogram(
            "glmimage_queue_wait_seconds",
            "Seconds a generation waited in the queue before it started.",
            buckets=QUEUE_BUCKETS,
            registry=self.registry,
        )
        self.step_seconds = Histogram(
            "glmimage_step_seconds",
            "Seconds per denoising step, one observation per finished generation.",
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )
        self.busy_workers = Gauge("glmimage_busy_workers", "Generations running now.", registry=self.registry)
        self.registry.register(_LiveCollector(live))

    # ---- the service's Observer ----------------------------------------------------------------------------
    def refused(self, reason: str) -> None:
        self.generations.labels("refused", reason).inc()

    def started(self, queue_s: float) -> None:
        self.queue_wait_seconds.observe(queue_s)
        self.busy_workers.inc()

    def ended(
        self, outcome: str, reason: str = "", model_s: float = 0.0, per_step_s: float = 0.0, images: int = 0
    ) -> None:
        self.busy_workers.dec()
        self.generations.labels(outcome, reason).inc()
        if outcome == "done":
            self.generation_seconds.observe(model_s)
            self.step_seconds.observe(per_step_s)
            self.images.inc(images)

    def exposition(self) -> bytes:
        """The Prometheus text format."""
        return generate_latest(self.registry)
