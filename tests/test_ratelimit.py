"""Tests for glmimage.ratelimit: limits parse strictly, limiters admit exactly what they promise, and a
visitor cannot forge their address. A fake clock stands in for time, so nothing sleeps."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from glmimage.ratelimit import (
    RateLimit,
    SlidingWindowLimiter,
    client_ip,
    parse_trusted_proxies,
)


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_limiter(text: str, max_keys: int = 100_000) -> tuple[SlidingWindowLimiter, FakeClock]:
    clock = FakeClock()
    return SlidingWindowLimiter(RateLimit.parse(text), clock=clock, max_keys=max_keys), clock


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


# --- SlidingWindowLimiter --------------------------------------------------------------------------------------


def test_burst_over_limit_is_refused_with_exact_retry_after() -> None:
    limiter, clock = make_limiter("3/minute")
    for t in (0.0, 1.0, 2.0):
        clock.now = t
        assert limiter.check("ip") == 0.0
    clock.now = 3.0
    assert limiter.check("ip") == pytest.approx(57.0)
    clock.now = 59.999
    assert limiter.check("ip") == pytest.approx(0.001)
    clock.now = 60.001
    assert limiter.check("ip") == 0.0


def test_window_slides_one_hit_at_a_time() -> None:
    limiter, clock = make_limiter("3/minute")
    for t in (0.0, 1.0, 2.0):
        clock.now = t
        limiter.check("ip")
    clock.now = 60.0  # only the hit at t=0 has left the window
    assert limiter.check("ip") == 0.0
    assert limiter.check("ip") == pytest.approx(1.0)  # next room when the t=1 hit leaves
    clock.now = 61.0
    assert limiter.check("ip") == 0.0


def test_refused_requests_do_not_extend_the_wait() -> None:
    limiter, clock = make_limiter("1/10s")
    assert limiter.check("ip") == 0.0
    for t in range(1, 10):
        clock.now = float(t)
        assert limiter.check("ip") == pytest.approx(10.0 - t)
    clock.now = 10.0
    assert limiter.check("ip") == 0.0


def test_two_keys_are_independent() -> None:
    limiter, _ = make_limiter("2/minute")
    assert limiter.check("a") == 0.0
    assert limiter.check("a") == 0.0
    assert limiter.check("a") > 0
    assert limiter.check("b") == 0.0
    assert limiter.check("b") == 0.0
    assert limiter.check("b") > 0


def test_check_with_two_keys_refuses_when_either_is_exhausted() -> None:
    limiter, clock = make_limiter("2/minute")
    limiter.check("ip")
    limiter.check("ip")
    clock.now = 5.0
    assert limiter.check("ip", "session-1") == pytest.approx(55.0)
    assert limiter.check("ip-2", "session-2") == 0.0
    assert limiter.check("ip-3", "session-2") == 0.0
    assert limiter.check("ip-4", "session-2") == pytest.approx(60.0)


def test_refused_check_records_nothing_under_any_key() -> None:
    limiter, _ = make_limiter("2/minute")
    limiter.check("ip")
    limiter.check("ip")
    for _ in range(10):
        assert limiter.check("ip", "session") > 0
    # The session was never admitted, so its whole allowance is still there.
    assert limiter.check("session") == 0.0
    assert limiter.check("session") == 0.0
    assert limiter.check("session") > 0


def test_retry_after_is_for_the_most_limited_key() -> None:
    limiter, clock = make_limiter("1/minute")
    limiter.check("early")
    clock.now = 30.0
    limiter.check("late")
    clock.now = 40.0
    assert limiter.check("early", "late") == pytest.approx(50.0)


def test_same_key_twice_counts_once() -> None:
    limiter, _ = make_limiter("2/minute")
    assert limiter.check("x", "x") == 0.0
    assert limiter.check("x") == 0.0
    assert limiter.check("x") > 0


def test_check_without_keys_is_an_error() -> None:
    limiter, _ = make_limiter("2/minute")
    with pytest.raises(ValueError):
        limiter.check()


def test_disabled_limit_never_refuses_and_tracks_nothing() -> None:
    limiter, _ = make_limiter("0")
    for _ in range(1000):
        assert limiter.check("ip", "session") == 0.0
    assert len(limiter) == 0


def test_reset_forgets_every_key() -> None:
    limiter, _ = make_limiter("1/hour")
    limiter.check("a")
    limiter.check("b")
    limiter.reset()
    assert len(limiter) == 0
    assert limiter.check("a") == 0.0


def test_more_than_max_keys_evicts_the_stalest() -> None:
    limiter, clock = make_limiter("1/hour", max_keys=3)
    for t, key in enumerate(["a", "b", "c", "d"]):
        clock.now = float(t)
        assert limiter.check(key) == 0.0
    assert len(limiter) == 3
    assert limiter.check("b") > 0  # still tracked
    assert limiter.check("d") > 0
    assert limiter.check("a") == 0.0  # evicted, so its history is gone; this evicts "b" in turn
    assert len(limiter) == 3
    assert limiter.check("b") == 0.0


def test_key_count_never_exceeds_max_keys() -> None:
    limiter, clock = make_limiter("5/hour", max_keys=50)
    for i in range(1000):
        clock.now = i * 0.01
        limiter.check(f"ip-{i}", f"session-{i}")
        assert len(limiter) <= 50


def test_expired_keys_are_dropped_even_if_never_checked_again() -> None:
    limiter, clock = make_limiter("3/minute")
    for i in range(100):
        limiter.check(f"visitor-{i}")
    assert len(limiter) == 100
    clock.now = 60.0
    limiter.check("newcomer")
    assert len(limiter) == 1


def test_old_timestamps_of_a_key_are_pruned() -> None:
    limiter, clock = make_limiter("2/minute")
    for t in (0.0, 50.0):
        clock.now = t
        limiter.check("ip")
    clock.now = 70.0  # the t=0 hit is pruned; the t=50 hit still counts
    assert limiter.check("ip") == 0.0
    assert limiter.check("ip") == pytest.approx(40.0)


def test_many_threads_on_one_key_admit_exactly_the_limit() -> None:
    requests = 25
    limiter = SlidingWindowLimiter(RateLimit(requests=requests, period_s=60.0), clock=FakeClock(1.0))
    threads_count, attempts_per_thread = 16, 50
    start = threading.Barrier(threads_count)
    admitted: list[int] = []
    admitted_lock = threading.Lock()

    def hammer() -> None:
        start.wait()
        mine = sum(limiter.check("shared-ip") == 0.0 for _ in range(attempts_per_thread))
        with admitted_lock:
            admitted.append(mine)

    threads = [threading.Thread(target=hammer) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(admitted) == requests


@given(
    requests=st.integers(min_value=1, max_value=10),
    offsets=st.lists(st.floats(min_value=0.0, max_value=59.999, allow_nan=False), max_size=60),
)
def test_hits_within_one_period_never_admit_more_than_requests(requests: int, offsets: list[float]) -> None:
    clock = FakeClock(1000.0)
    limiter = SlidingWindowLimiter(RateLimit(requests=requests, period_s=60.0), clock=clock)
    admitted = 0
    for offset in sorted(offsets):
        clock.now = 1000.0 + offset
        retry_after = limiter.check("ip")
        if retry_after == 0.0:
            admitted += 1
        else:
            assert retry_after > 0
    assert admitted == min(requests, len(offsets))


@given(
    requests=st.integers(min_value=1, max_value=5),
    gaps=st.lists(st.floats(min_value=0.0, max_value=30.0, allow_nan=False), max_size=80),
)
def test_no_sliding_window_ever_holds_more_than_requests(requests: int, gaps: list[float]) -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(RateLimit(requests=requests, period_s=10.0), clock=clock)
    admitted_at: list[float] = []
    for gap in gaps:
        clock.now += gap
        if limiter.check("ip") == 0.0:
            admitted_at.append(clock.now)
    for start in admitted_at:
        assert sum(start <= t < start + 10.0 for t in admitted_at) <= requests


# --- client_ip / parse_trusted_proxies -------------------------------------------------------------------------


def test_no_trusted_proxies_ignores_forged_forwarded_for() -> None:
    headers = {"X-Forwarded-For": "1.2.3.4"}
    assert client_ip("203.0.113.9", headers, []) == "203.0.113.9"


def test_untrusted_peer_ignores_forwarded_for() -> None:
    headers = {"X-Forwarded-For": "1.2.3.4"}
    assert client_ip("203.0.113.9", headers, ["10.0.0.1"]) == "203.0.113.9"


def test_trusted_peer_gives_rightmost_untrusted_entry() -> None:
    # The visitor forged "1.2.3.4"; our proxy appended the address it really saw, 198.51.100.7.
    headers = {"X-Forwarded-For": "1.2.3.4, 198.51.100.7"}
    assert client_ip("10.0.0.1", headers, ["10.0.0.1"]) == "198.51.100.7"


def test_chain_of_trusted_proxies_is_skipped() -> None:
    headers = {"X-Forwarded-For": "6.6.6.6, 198.51.100.7, 10.0.0.2, 10.0.0.3"}
    assert client_ip("10.0.0.1", headers, ["10.0.0.1", "10.0.0.2", "10.0.0.3"]) == "198.51.100.7"


def test_cidr_network_is_trusted() -> None:
    headers = {"X-Forwarded-For": "198.51.100.7, 10.20.30.40"}
    assert client_ip("10.1.2.3", headers, ["10.0.0.0/8"]) == "198.51.100.7"
    assert client_ip("11.1.2.3", headers, ["10.0.0.0/8"]) == "11.1.2.3"


def test_malformed_header_entries_are_skipped() -> None:
    headers = {"X-Forwarded-For": "198.51.100.7, not-an-ip, , 999.1.1.1, unknown"}
    assert client_ip("10.0.0.1", headers, ["10.0.0.0/8"]) == "198.51.100.7"


def test_trusted_peer_without_header_gives_peer() -> None:
    assert client_ip("10.0.0.1", {}, ["10.0.0.0/8"]) == "10.0.0.1"
    assert client_ip("10.0.0.1", {"X-Forwarded-For": "garbage"}, ["10.0.0.0/8"]) == "10.0.0.1"


def test_header_of_only_trusted_proxies_gives_leftmost() -> None:
    headers = {"X-Forwarded-For": "10.0.0.5, 10.0.0.2"}
    assert client_ip("10.0.0.1", headers, ["10.0.0.0/8"]) == "10.0.0.5"


def test_ipv6_peers_proxies_and_clients() -> None:
    headers = {"X-Forwarded-For": "2001:DB8::1, fd00::2"}
    assert client_ip("::1", headers, ["::1", "fd00::/8"]) == "2001:db8::1"
    assert client_ip("2001:db8::99", headers, ["::1"]) == "2001:db8::99"


def test_ipv4_mapped_ipv6_peer_matches_ipv4_trust() -> None:
    headers = {"X-Forwarded-For": "198.51.100.7"}
    assert client_ip("::ffff:127.0.0.1", headers, ["127.0.0.1"]) == "198.51.100.7"


@pytest.mark.parametrize("name", ["x-forwarded-for", "X-FORWARDED-FOR", "X-Forwarded-For", "x-Forwarded-fOR"])
def test_header_name_is_case_insensitive(name: str) -> None:
    assert client_ip("127.0.0.1", {name: "198.51.100.7"}, ["127.0.0.1"]) == "198.51.100.7"


def test_peer_none_is_unknown() -> None:
    assert client_ip(None, {"X-Forwarded-For": "198.51.100.7"}, ["127.0.0.1"]) == "unknown"


def test_peer_that_is_not_an_ip_is_returned_as_is() -> None:
    assert client_ip("testclient", {"X-Forwarded-For": "198.51.100.7"}, ["127.0.0.1"]) == "testclient"


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
