"""Rate limits: settings parse strictly, and the service admits exactly what the limit promises, per address and
per session, for /generate and for the prompt enhancer (counting is the `limits` library's moving window, in real
time: one test waits one second). That a visitor cannot forge their address is checked through the server in
test_rate_limit_e2e.py."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import request_kwargs
from hypothesis import given
from hypothesis import strategies as st

from glmimage.config import Settings
from glmimage.errors import InputError, Refused
from glmimage.ratelimit import RateLimit, parse_trusted_proxies
from glmimage.service import GenerationService

# --- RateLimit.parse -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "requests", "period_s"),
    [
        ("6/minute", 6, 60.0),
        ("6/min", 6, 60.0),
        ("6/m", 6, 60.0),
        ("10/second", 10, 1.0),
        ("10/s", 10, 1.0),
        ("100/hour", 100, 3600.0),
        ("100/h", 100, 3600.0),
        ("30/day", 30, 86400.0),
        ("6/30s", 6, 30.0),
        ("6/2m", 6, 120.0),
        ("6/2minutes", 6, 120.0),
        ("  6 / Minute ", 6, 60.0),
        ("6/MIN", 6, 60.0),
        ("\t6/ 30 s\n", 6, 30.0),
        ("0", 0, 0.0),
        (" 0 ", 0, 0.0),
    ],
)
def test_parse_accepts_documented_forms(text: str, requests: int, period_s: float) -> None:
    assert RateLimit.parse(text) == RateLimit(requests=requests, period_s=period_s)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "garbage",
        "6",
        "-1/minute",
        "6/-1m",
        "1.5/minute",
        "6/1.5m",
        "6/0s",
        "6/0minute",
        "0/minute",
        "6/fortnight",
        "6 per minute",
        "6/minute/extra",
        "/minute",
        "6//minute",
        "٦/minute",  # a non-ASCII digit is not a number a config file should contain
    ],
)
def test_parse_rejects_anything_else_naming_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"minute|'0'"):
        RateLimit.parse(text)


def test_parse_error_message_lists_accepted_forms() -> None:
    with pytest.raises(ValueError) as excinfo:
        RateLimit.parse("lots")
    message = str(excinfo.value)
    assert "'lots'" in message
    for form in ("N/second", "N/minute", "N/hour", "N/day", "6/30s", "'0'"):
        assert form in message


def test_zero_is_disabled_and_others_enabled() -> None:
    assert not RateLimit.parse("0").enabled
    assert RateLimit.parse("1/day").enabled


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("6/min", "6/minute"),
        ("10/s", "10/second"),
        ("100/h", "100/hour"),
        ("30/d", "30/day"),
        ("6/30s", "6/30s"),
        ("6/2m", "6/2m"),
        ("6/90s", "6/90s"),
        ("6/60m", "6/hour"),
        ("6/48h", "6/2d"),
        ("0", "0"),
    ],
)
def test_str_is_canonical_text(text: str, expected: str) -> None:
    assert str(RateLimit.parse(text)) == expected


@given(
    requests=st.integers(min_value=1, max_value=10**6),
    count=st.integers(min_value=1, max_value=10**4),
    unit=st.sampled_from(["s", "sec", "m", "minute", "h", "hours", "d", "day"]),
)
def test_str_round_trips_through_parse(requests: int, count: int, unit: str) -> None:
    limit = RateLimit.parse(f"{requests}/{count}{unit}")
    assert RateLimit.parse(str(limit)) == limit


@pytest.mark.parametrize(("requests", "period_s"), [(-1, 60.0), (1.5, 60.0), (3, 0.0), (3, -5.0), (3, float("inf"))])
def test_constructor_rejects_invalid_values(requests: int, period_s: float) -> None:
    with pytest.raises(ValueError):
        RateLimit(requests=requests, period_s=period_s)


# --- counting, through the service that admits every /generate and enhancer call ---------------------------------


def service_with(server, styles, rate: str) -> GenerationService:
    """The service the page uses, with its own counters, on the test server's engine (tiny model)."""
    return GenerationService(Settings(model="tiny", rate_limit=rate), server.app.engine, styles, lambda: "tiny")


def admitted(service: GenerationService, client: str, session: str, **overrides) -> bool:
    try:
        service.admit(request_kwargs(**overrides), client, session, 0)
    except Refused:
        return False
    return True


def test_a_burst_over_the_limit_is_refused_with_the_wait_and_the_limit(server, styles):
    service = service_with(server, styles, "3/minute")
    assert [admitted(service, "203.0.113.1", f"s{i}") for i in range(3)] == [True, True, True]
    with pytest.raises(Refused) as caught:
        service.admit(request_kwargs(), "203.0.113.1", "s3", 0)
    assert caught.value.key == "error.rate_limited"
    assert caught.value.params == {"seconds": caught.value.params["seconds"], "limit": "3/minute"}
    assert 59 <= caught.value.params["seconds"] <= 61


def test_after_the_window_the_visitor_is_admitted_again(server, styles):
    service = service_with(server, styles, "1/1s")
    assert admitted(service, "203.0.113.2", "s")
    with pytest.raises(Refused) as caught:
        service.admit(request_kwargs(), "203.0.113.2", "s", 0)
    assert caught.value.params["seconds"] == 1
    time.sleep(1.05)
    assert admitted(service, "203.0.113.2", "s")


def test_the_limit_counts_the_address_and_the_session_and_a_refusal_uses_up_neither(server, styles):
    service = service_with(server, styles, "2/minute")
    assert admitted(service, "ip-a", "s1") and admitted(service, "ip-a", "s1")
    assert not admitted(service, "ip-a", "s2")  # the address is used up
    # The refusal above counted nothing for session s2: its whole allowance is still there.
    assert admitted(service, "ip-b", "s2") and admitted(service, "ip-c", "s2")
    assert not admitted(service, "ip-d", "s2")  # now the session is used up, whatever the address
    assert admitted(service, "ip-d", "s3")  # another visitor entirely


def test_bad_input_and_the_job_cap_are_refused_without_using_the_allowance(server, styles):
    service = service_with(server, styles, "1/minute")
    with pytest.raises(InputError):
        service.admit(request_kwargs(width=513), "ip-e", "s", 0)
    with pytest.raises(Refused, match="error.too_many_jobs"):
        GenerationService(
            Settings(model="tiny", rate_limit="1/minute", max_jobs_per_client=1), server.app.engine, styles, str
        ).admit(request_kwargs(), "ip-e", "s", 1)
    assert admitted(service, "ip-e", "s")


def test_many_threads_of_one_visitor_get_exactly_the_limit(server, styles):
    service = service_with(server, styles, "25/minute")
    start = threading.Barrier(8)
    results: list[bool] = []

    def hammer() -> None:
        start.wait()
        mine = [admitted(service, "shared-ip", "shared-session") for _ in range(10)]
        results.extend(mine)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 25


def test_the_setting_zero_admits_everything(server, styles):
    service = service_with(server, styles, "0")
    assert all(admitted(service, "ip-f", "s") for _ in range(200))


def test_the_enhancer_has_an_allowance_of_its_own_and_checks_its_text_like_a_prompt(server, styles):
    service = service_with(server, styles, "1/minute")
    assert admitted(service, "ip-g", "s")
    assert service.admit_enhancement("a fox", "ip-g", "s") == "a fox"  # generating used none of it
    with pytest.raises(Refused, match="error.rate_limited"):
        service.admit_enhancement("a fox", "ip-g", "s")
    with pytest.raises(InputError) as caught:
        service_with(server, styles, "1/minute").admit_enhancement("x" * 5000, "ip-h", "s")
    assert caught.value.key == "error.text_too_long" and caught.value.params["field"] == "prompt"
    with pytest.raises(InputError) as caught:
        service.admit_enhancement("a\x00b", "ip-i", "s2")
    assert caught.value.key == "error.control_chars"
    # An empty prompt is refused by the enhancer itself, before any outside call: it costs no allowance.
    assert service.admit_enhancement("  ", "ip-j", "s3") == "  "
    assert service.admit_enhancement("a fox", "ip-j", "s3") == "a fox"


# --- parse_trusted_proxies ----------------------------------------------------------------------------------------


def test_parse_trusted_proxies_reads_a_comma_list() -> None:
    assert parse_trusted_proxies("10.0.0.0/8, 127.0.0.1 ,::1") == ["10.0.0.0/8", "127.0.0.1", "::1"]
    assert parse_trusted_proxies("10.1.2.3/8") == ["10.1.2.3/8"]  # host bits allowed (strict=False)


@pytest.mark.parametrize("text", ["", "   "])
def test_parse_trusted_proxies_blank_trusts_nobody(text: str) -> None:
    assert parse_trusted_proxies(text) == []


@pytest.mark.parametrize("bad", ["proxy.internal", "10.0.0.0/33", "300.1.1.1", "::g"])
def test_parse_trusted_proxies_names_the_bad_entry(bad: str) -> None:
    with pytest.raises(ValueError, match=bad.replace(".", r"\.")):
        parse_trusted_proxies(f"127.0.0.1, {bad}")
