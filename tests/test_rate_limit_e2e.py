"""Rate limits on a real server: a burst over the limit is refused before it queues (the POST itself is answered
422 and the engine never sees it) while other visitors are served; the refusal says when to retry, and after the
window the visitor is served again. The limit counts the client address (X-Forwarded-For only from
--trusted-proxies) and the session; a visitor also has at most --max-jobs-per-client jobs waiting or running.

Each visitor is a source address on the loopback network (127.0.0.x).
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from conftest import request_kwargs
from rawhttp import call, http_client, outcome_of, refusal, submit

from glmimage.config import Settings
from glmimage.engine import GenerationResult, LocalEngine
from glmimage.errors import Refused
from glmimage.service import GenerationService

RETRY = re.compile(r"try again in (\d+) s")


class CountingEngine(LocalEngine):
    """The real engine, remembering the prompt of every request that reached it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prompts: list[str] = []

    def generate(self, request: Any, *args: Any, **kwargs: Any) -> GenerationResult:
        self.prompts.append(request.prompt)
        return super().generate(request, *args, **kwargs)


def fast(**overrides: Any) -> dict[str, Any]:
    return request_kwargs(num_inference_steps=1, **overrides)


def finish(client, response) -> str:
    return outcome_of(client, response, time.perf_counter()).kind


@pytest.fixture(scope="module")
def limited(start_server):
    return start_server(rate_limit="3/2s", engine_factory=CountingEngine)


@pytest.fixture(scope="module")
def behind_proxy(start_server):
    return start_server(
        rate_limit="1/minute", trusted_proxies="127.0.0.1", max_jobs_per_client=1, engine_factory=CountingEngine
    )


def test_a_burst_over_the_limit_is_refused_before_queuing_while_another_client_is_served(limited):
    engine = limited.app.engine
    flooder = http_client(limited.url, source="127.0.0.9")
    responses = [submit(flooder, fast(prompt=f"burst {i}")) for i in range(5)]
    assert [r.status_code for r in responses] == [200, 200, 200, 422, 422]
    message = refusal(responses[3])["prompt"]
    assert message.startswith("Too many requests: the limit is 3/2s per visitor.")
    assert 1 <= int(RETRY.search(message).group(1)) <= 2

    other = call(http_client(limited.url, source="127.0.0.2"), fast(prompt="someone else"))
    assert other.kind == "image"
    assert [finish(flooder, r) for r in responses[:3]] == ["image"] * 3
    assert sorted(engine.prompts[-4:]) == ["burst 0", "burst 1", "burst 2", "someone else"]
    assert "burst 3" not in engine.prompts and "burst 4" not in engine.prompts


def test_after_the_window_the_client_is_served_again(limited):
    client = http_client(limited.url, source="127.0.0.3")
    for _ in range(3):
        assert submit(client, fast()).status_code == 200
    refused = submit(client, fast())
    assert refused.status_code == 422
    wait = int(RETRY.search(refusal(refused)["prompt"]).group(1))
    time.sleep(wait + 0.1)
    assert call(client, fast(prompt="after the window")).kind == "image"


def test_a_forged_x_forwarded_for_does_not_dodge_the_limit(limited):
    # From 127.0.0.1, whose X-Forwarded-For uvicorn would believe by default.
    client = http_client(limited.url, source="127.0.0.1")
    statuses = [submit(client, fast(), headers={"X-Forwarded-For": f"198.51.100.{i}"}).status_code for i in range(4)]
    assert statuses == [200, 200, 200, 422]


def test_x_forwarded_for_is_believed_only_from_a_trusted_proxy(behind_proxy):
    proxy = http_client(behind_proxy.url)  # 127.0.0.1, the trusted proxy
    assert call(proxy, fast(), headers={"X-Forwarded-For": "203.0.113.7"}).kind == "image"
    assert call(proxy, fast(), headers={"X-Forwarded-For": "203.0.113.8"}).kind == "image"  # another visitor
    again = submit(proxy, fast(), headers={"X-Forwarded-For": "203.0.113.7"})
    assert again.status_code == 422 and "Too many requests" in refusal(again)["prompt"]

    untrusted = http_client(behind_proxy.url, source="127.0.0.5")
    assert call(untrusted, fast(), headers={"X-Forwarded-For": "203.0.113.9"}).kind == "image"
    forged = submit(untrusted, fast(), headers={"X-Forwarded-For": "203.0.113.10"})
    assert forged.status_code == 422 and "Too many requests" in refusal(forged)["prompt"]


def test_the_limit_also_counts_the_session_across_addresses(behind_proxy):
    first = http_client(behind_proxy.url, source="127.0.0.6")
    assert call(first, fast(), session_hash="one-session").kind == "image"
    second = http_client(behind_proxy.url, source="127.0.0.7")
    same_session = submit(second, fast(), session_hash="one-session")
    assert same_session.status_code == 422 and "Too many requests" in refusal(same_session)["prompt"]
    assert call(second, fast(), session_hash="another-session").kind == "image"


def test_a_client_may_have_only_max_jobs_per_client_waiting_or_running(behind_proxy):
    client = http_client(behind_proxy.url, source="127.0.0.8")
    running = submit(client, request_kwargs(num_inference_steps=8))
    assert running.status_code == 200
    second = submit(client, fast())
    assert second.status_code == 422
    assert refusal(second) == {
        "prompt": "You already have 1 generations waiting or running. Please wait for one to finish."
    }
    assert finish(client, running) == "image"


def test_rate_limit_zero_disables_the_limit_and_a_limit_refuses_with_the_wait(styles, server):
    unlimited = GenerationService(Settings(model="tiny", rate_limit="0"), server.app.engine, styles, lambda: "tiny")
    for _ in range(50):
        unlimited.admit(fast(), "203.0.113.1", "session", 0)
    limited = GenerationService(
        Settings(model="tiny", rate_limit="3/minute"), server.app.engine, styles, lambda: "tiny"
    )
    for _ in range(3):
        limited.admit(fast(), "203.0.113.1", "session", 0)
    with pytest.raises(Refused) as caught:
        limited.admit(fast(), "203.0.113.1", "session", 0)
    assert caught.value.key == "error.rate_limited"
    assert 1 <= caught.value.params["seconds"] <= 61 and caught.value.params["limit"] == "3/minute"


def test_a_trusted_network_written_with_host_bits_is_trusted_as_the_network(start_server):
    # "127.0.0.1/8" is accepted by --trusted-proxies (host bits allowed) and means the network 127.0.0.0/8.
    server = start_server(rate_limit="1/minute", trusted_proxies="127.0.0.1/8")
    proxy = http_client(server.url, source="127.0.0.40")
    assert call(proxy, fast(), headers={"X-Forwarded-For": "203.0.113.50"}).kind == "image"
    assert call(proxy, fast(), headers={"X-Forwarded-For": "203.0.113.51"}).kind == "image"  # another visitor
    again = submit(proxy, fast(), headers={"X-Forwarded-For": "203.0.113.50"})
    assert again.status_code == 422 and "Too many requests" in refusal(again)["prompt"]
