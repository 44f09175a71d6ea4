"""Soak: 300 small generations in one process, most straight through the service (fast) and every fifth through
the running server. Resident memory at the end stays within a stated bound of the memory after the first 20, and
everything a session keeps (history, log, image files) stays at its named limit however long it runs."""

from __future__ import annotations

import gc
import time
from pathlib import Path

import psutil
import pytest
from conftest import request_kwargs
from rawhttp import call, http_client, session_of

from glmimage.limits import MAX_HISTORY_ENTRIES, MAX_LOG_ENTRIES
from glmimage.service import GenerationService
from glmimage.sessions import Session

GENERATIONS = 300
THROUGH_SERVER_EVERY = 5
MEASURE_AFTER = 20
GROWTH_BOUND_MB = 150.0
PROMPTS = ["a red apple on a wooden table", "一只可爱的猫坐在沙发上, 高清", "a lighthouse at dusk, " * 12, "x"]


def rss_mb() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


@pytest.mark.slow
@pytest.mark.timeout(600)  # ~40 s on an idle 2-core machine; the margin is for busy shared runners
def test_three_hundred_generations_keep_memory_history_log_and_files_bounded(server, styles, tmp_path):
    service = GenerationService(server.settings, server.app.engine, styles, lambda: "tiny")
    session = Session(str(tmp_path))
    client = http_client(server.url)
    started = time.perf_counter()
    after_first: float | None = None
    for n in range(1, GENERATIONS + 1):
        values = request_kwargs(
            prompt=PROMPTS[n % len(PROMPTS)], num_inference_steps=1, guidance_scale=0.0, randomize_seed=True
        )
        if n % THROUGH_SERVER_EVERY == 0:
            values.update(num_inference_steps=2, guidance_scale=3.5)
            outcome = call(client, values, session_hash="soak-session")
            assert outcome.kind == "image", outcome.body[:300]
        else:
            outcome = service.run(service.validated(values), session, queue_s=0.0)
            assert len(outcome.files) == 1
        if n == MEASURE_AFTER:
            after_first = rss_mb()
    at_end = rss_mb()
    elapsed = time.perf_counter() - started
    print(
        f"\nsoak: {GENERATIONS} generations in {elapsed:.1f} s ({GENERATIONS // THROUGH_SERVER_EVERY} through the "
        f"server); RSS after {MEASURE_AFTER}: {after_first:.0f} MiB, at the end: {at_end:.0f} MiB "
        f"({at_end - after_first:+.0f} MiB, bound +{GROWTH_BOUND_MB:.0f})"
    )

    assert at_end - after_first < GROWTH_BOUND_MB
    assert len(session.history) == MAX_HISTORY_ENTRIES
    assert len(session.log) == MAX_LOG_ENTRIES
    assert sorted(session.folder.glob("*.png")) == sorted(Path(f) for e in session.history for f in e.files)
    served = session_of(server.app.demo, "soak-session")
    assert len(served.history) == MAX_HISTORY_ENTRIES
    assert len(list(served.folder.glob("*.png"))) == MAX_HISTORY_ENTRIES
