"""Thirty visitors at once against one GPU slot (concurrency 1), a small queue and a rate limit, so that every
outcome happens: each request ends in an image, a queue-full refusal or a rate-limit refusal, none hangs, the
server stays healthy and answers /healthz quickly throughout, and memory and live sessions stay bounded.

Each visitor is its own HTTP client from its own loopback address (127.0.0.x). The server runs in this process,
so this process's resident memory is the server's.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections import Counter

import psutil
import pytest
from conftest import request_kwargs
from rawhttp import Outcome, call, healthz, http_client

CLIENTS = 30
REQUESTS_PER_CLIENT = 4
MAX_QUEUE = 4
MAX_SESSIONS = 40
REQUEST_BOUND_S = 60.0  # no request may take longer, whatever its outcome
MEMORY_BOUND_MB = 250.0  # peak resident memory over the idle server's


@pytest.mark.slow
def test_thirty_clients_each_get_an_image_or_a_clear_refusal_and_the_server_stays_healthy(start_server):
    server = start_server(max_queue=MAX_QUEUE, rate_limit="1/minute", max_jobs_per_client=1, max_sessions=MAX_SESSIONS)
    assert call(http_client(server.url, source="127.0.0.250"), request_kwargs(num_inference_steps=1)).kind == "image"
    process = psutil.Process()
    baseline_mb = process.memory_info().rss / 2**20
    peak_mb = baseline_mb
    healthz_times: list[float] = []
    queue_lengths: list[int] = []
    outcomes: list[tuple[int, Outcome | str]] = []
    lock = threading.Lock()
    done = threading.Event()
    start = threading.Barrier(CLIENTS)

    def visitor(index: int) -> None:
        client = http_client(server.url, source=f"127.0.1.{index + 1}", timeout=REQUEST_BOUND_S)
        rng = random.Random(index)
        start.wait()
        for n in range(REQUESTS_PER_CLIENT):
            try:
                result: Outcome | str = call(client, request_kwargs(num_inference_steps=1, seed=index * 10 + n))
            except Exception as exc:  # noqa: BLE001 - a timeout or a dropped connection is an outcome to report
                result = f"{type(exc).__name__}: {exc}"
            with lock:
                outcomes.append((index, result))
            time.sleep(rng.uniform(0.1, 0.6))

    def watch() -> None:
        nonlocal peak_mb
        client = http_client(server.url, source="127.0.0.251")
        while not done.is_set():
            ttfb, body = healthz(client)
            healthz_times.append(ttfb)
            queue_lengths.append(body["queue_length"])
            peak_mb = max(peak_mb, process.memory_info().rss / 2**20)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    visitors = [threading.Thread(target=visitor, args=(i,)) for i in range(CLIENTS)]
    started = time.perf_counter()
    watcher.start()
    for thread in visitors:
        thread.start()
    for thread in visitors:
        thread.join(REQUESTS_PER_CLIENT * (REQUEST_BOUND_S + 1))
    done.set()
    watcher.join(10)
    elapsed = time.perf_counter() - started

    assert not any(thread.is_alive() for thread in visitors), "a request hung"
    assert len(outcomes) == CLIENTS * REQUESTS_PER_CLIENT
    kinds = Counter(o.kind if isinstance(o, Outcome) else "exception" for _, o in outcomes)
    rate_limited = sum(
        1
        for _, o in outcomes
        if isinstance(o, Outcome)
        and o.kind == "refused"
        and o.messages.get("prompt", "").startswith("Too many requests")
    )
    failed = CLIENTS * REQUESTS_PER_CLIENT - kinds["image"] - kinds["queue_full"] - rate_limited
    p50, worst = statistics.median(healthz_times), max(healthz_times)
    slowest = max(o.seconds for _, o in outcomes if isinstance(o, Outcome))
    print(
        f"\nload: {CLIENTS} clients x {REQUESTS_PER_CLIENT} requests in {elapsed:.1f} s: served {kinds['image']}, "
        f"refused {kinds['queue_full'] + rate_limited} (queue full {kinds['queue_full']}, rate limited "
        f"{rate_limited}), failed {failed}; slowest request {slowest:.2f} s; "
        f"peak RSS {peak_mb:.0f} MiB (idle {baseline_mb:.0f} MiB, +{peak_mb - baseline_mb:.0f}); "
        f"/healthz TTFB p50 {p50 * 1000:.1f} ms, max {worst * 1000:.1f} ms over {len(healthz_times)} calls; "
        f"longest queue {max(queue_lengths)}"
    )

    assert failed == 0, [
        o for _, o in outcomes if not isinstance(o, Outcome) or o.kind not in ("image", "queue_full", "refused")
    ]
    assert kinds["image"] > 0 and kinds["queue_full"] > 0 and rate_limited > 0
    assert slowest < REQUEST_BOUND_S
    assert max(queue_lengths) <= MAX_QUEUE  # a burst of simultaneous requests did not slip past --max-queue
    for _, outcome in outcomes:
        if outcome.kind == "queue_full":
            assert "Queue is full" in outcome.body
        if outcome.kind == "refused":
            assert "try again in" in outcome.messages["prompt"]
    assert peak_mb - baseline_mb < MEMORY_BOUND_MB
    assert p50 < 0.1
    # Every plain-HTTP call is a session of its own: 120 of them, at most MAX_SESSIONS kept.
    assert len(server.app.demo.state_holder.session_data) <= MAX_SESSIONS

    _, health = healthz(http_client(server.url))
    assert health["status"] == "ok" and health["queue_length"] == 0
    assert call(http_client(server.url, source="127.0.0.252"), request_kwargs(num_inference_steps=1)).kind == "image"
