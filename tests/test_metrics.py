"""GET /metrics: Prometheus text that parses, counts what was done (generations, refusals by reason, images,
timings) and never holds a prompt, a session id or an address; each server its own registry."""

from __future__ import annotations

from conftest import request_kwargs
from prometheus_client.parser import text_string_to_metric_families
from rawhttp import call, http_client

CANARY = "metrics-canary-prompt 紫色长颈鹿"


def scrape(server) -> tuple[str, dict[tuple[str, tuple], float]]:
    """The raw text and {(sample name, sorted labels): value}."""
    response = http_client(server.url).get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    return response.text, samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_generations_refusals_and_images_without_any_prompt_session_or_address(start_server):
    server = start_server(rate_limit="3/minute")
    client = http_client(server.url)
    session_hashes = ["metrics-session-one", "metrics-session-two"]
    first = call(client, request_kwargs(prompt=CANARY), session_hash=session_hashes[0])
    second = call(client, request_kwargs(prompt=CANARY, num_images=2), session_hash=session_hashes[1])
    assert (first.kind, second.kind) == ("image", "image")
    assert call(client, request_kwargs(prompt=CANARY, width=100)).kind == "refused"  # bad input
    assert call(client, request_kwargs(prompt=CANARY)).kind == "image"
    limited = call(client, request_kwargs(prompt=CANARY))
    assert limited.kind == "refused" and "Too many requests" in limited.messages["prompt"]

    text, samples = scrape(server)
    assert value(samples, "glmimage_generations_total", outcome="done", reason="") == 3
    assert value(samples, "glmimage_generations_total", outcome="refused", reason="invalid_input") == 1
    assert value(samples, "glmimage_generations_total", outcome="refused", reason="rate_limited") == 1
    assert value(samples, "glmimage_generations_total", outcome="failed", reason="generation_failed") == 0
    assert value(samples, "glmimage_images_total") == 4
    for histogram in ("glmimage_generation_seconds", "glmimage_queue_wait_seconds", "glmimage_step_seconds"):
        assert value(samples, f"{histogram}_count") == 3
        assert value(samples, f"{histogram}_bucket", le="+Inf") == 3
    assert value(samples, "glmimage_generation_seconds_sum") > 0
    assert value(samples, "glmimage_busy_workers") == 0
    assert value(samples, "glmimage_queue_length") == 0
    assert value(samples, "glmimage_model_state", state="ready") == 1
    assert value(samples, "glmimage_model_state", state="loading") == 0
    assert value(samples, "glmimage_maintenance") == 0 and value(samples, "glmimage_draining") == 0
    # No GPU here: no GPU memory gauges (tests/test_metrics_gpu.py checks them on a CUDA machine).
    assert not any(name.startswith("glmimage_gpu_") for name, _ in samples)

    for private in (CANARY, "metrics-canary", "紫色", *session_hashes, "127.0.0.1"):
        assert private not in text
    labels = {key for _, sample_labels in samples for key, _ in sample_labels}
    assert labels <= {"outcome", "reason", "state", "le", "device"}


def test_two_servers_in_one_process_keep_separate_metrics(start_server):
    one, two = start_server(), start_server()
    assert call(http_client(one.url), request_kwargs()).kind == "image"
    _, first = scrape(one)
    _, second = scrape(two)
    assert value(first, "glmimage_generations_total", outcome="done", reason="") == 1
    assert value(second, "glmimage_generations_total", outcome="done", reason="") == 0


def test_no_metrics_turns_the_route_off(start_server):
    server = start_server(metrics=False)
    assert http_client(server.url).get("/metrics").status_code == 404
    assert call(http_client(server.url), request_kwargs()).kind == "image"  # nothing else changes
