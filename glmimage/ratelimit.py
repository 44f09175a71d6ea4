"""Per-visitor limits for a shared GPU: how often one visitor may generate, counted by an address they cannot forge.

A public Space has one GPU and one queue. Without limits a single visitor (or a script) can fill the queue and
everyone else waits. This module holds the pieces the service uses, with no gradio import:

- `RateLimit`: a parsed "6/minute" setting. Our own parser, because the accepted forms ("6/30s", "6/2m", "0")
  are not all forms `limits.parse` reads, and its errors name the forms an operator may write.
- `VisitorLimiter`: the counting itself, on the `limits` library's moving window.
- `parse_trusted_proxies`: the `--trusted-proxies` setting, checked at start-up. The client address itself is
  uvicorn's (its proxy-header handling, told to trust exactly these proxies), never parsed a second time here.
"""

from __future__ import annotations

import ipaddress
import re
import threading
import time
from dataclasses import dataclass

from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

_UNIT_SECONDS = {
    "s": 1,
    "sec": 1,
    "secs": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "min": 60,
    "mins": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hr": 3600,
    "hrs": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
}
# Longest unit first, so __str__ writes "6/hour" rather than "6/60m".
_UNIT_NAMES = (("day", "d", 86400), ("hour", "h", 3600), ("minute", "m", 60), ("second", "s", 1))
_RATE_RE = re.compile(r"([0-9]+)\s*/\s*([0-9]*)\s*([a-z]+)")
_ACCEPTED_FORMS = (
    "accepted forms are 'N/second', 'N/minute', 'N/hour', 'N/day' (or s, sec, m, min, h, hr, d), "
    "'N/<count><unit>' such as '6/30s' or '6/2m', and '0' to disable; N is a whole number"
)


@dataclass(frozen=True)
class RateLimit:
    """At most `requests` requests per `period_s` seconds; `requests == 0` disables the limit.

    Kept as a value (not a string) so a typo in the setting fails at start-up, not on the first visitor.
    """

    requests: int
    period_s: float

    def __post_init__(self) -> None:
        if not isinstance(self.requests, int) or self.requests < 0:
            raise ValueError(f"RateLimit.requests must be a whole number >= 0, got {self.requests!r}")
        if self.requests > 0 and not (self.period_s > 0 and self.period_s != float("inf")):
            raise ValueError(f"RateLimit.period_s must be a positive number of seconds, got {self.period_s!r}")

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """Read a setting such as "6/minute" or "6/30s"; "0" disables. Raises ValueError naming the accepted forms."""
        cleaned = text.strip().lower()
        if cleaned.isascii() and cleaned.isdigit():
            if int(cleaned) == 0:
                return cls(requests=0, period_s=0.0)
            raise ValueError(f"Rate limit {text!r} has no period; {_ACCEPTED_FORMS}")
        match = _RATE_RE.fullmatch(cleaned)
        if match is None or match.group(3) not in _UNIT_SECONDS:
            raise ValueError(f"Cannot read rate limit {text!r}; {_ACCEPTED_FORMS}")
        requests = int(match.group(1))
        count = int(match.group(2)) if match.group(2) else 1
        if requests == 0:
            # "0/minute" could mean "disabled" or "nobody may generate": make the writer say which.
            raise ValueError(f"Rate limit {text!r} allows zero requests; write '0' to disable the limit")
        if count == 0:
            raise ValueError(f"Rate limit {text!r} has a zero-length period; {_ACCEPTED_FORMS}")
        return cls(requests=requests, period_s=float(count * _UNIT_SECONDS[match.group(3)]))

    @property
    def enabled(self) -> bool:
        """False for the "0" setting, so callers can skip limiting entirely."""
        return self.requests > 0

    def __str__(self) -> str:
        """The setting as text; `RateLimit.parse(str(limit)) == limit` for every limit that `parse` returns."""
        if not self.enabled:
            return "0"
        for name, _, seconds in _UNIT_NAMES:
            if self.period_s == seconds:
                return f"{self.requests}/{name}"
        for _, abbreviation, seconds in _UNIT_NAMES:
            if self.period_s % seconds == 0:
                return f"{self.requests}/{int(self.period_s // seconds)}{abbreviation}"
        return f"{self.requests}/{self.period_s!r}s"  # fractional seconds: readable, but `parse` rejects it


class VisitorLimiter:
    """At most ``limit`` admissions per key (a client address, a session) on ``limits``' moving window.

    A moving window is exact: unlike fixed windows it never admits a double burst across a window boundary, and
    it says when the next request will fit. Counting is all-or-nothing over the keys of one request, so a request
    refused because of one key (say the session) does not use up another key's allowance (say the address).
    ``limits`` keeps its windows in memory and drops a key's entries once they leave the window.
    """

    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self._item = RateLimitItemPerSecond(limit.requests, int(limit.period_s)) if limit.enabled else None
        self._window = MovingWindowRateLimiter(MemoryStorage())
        # test-then-hit over several keys must be one step: two requests must not both pass the test.
        self._lock = threading.Lock()

    def hit(self, *keys: str, cost: int = 1) -> float:
        """Admit one request counted against every key, or say how long to wait.

        Returns 0.0 when admitted, else the seconds (> 0) until the most-limited key has room again. The same key
        twice counts once. A disabled limit always returns 0.0. ``cost`` counts the request as that many requests
        (a costly generation uses more of the allowance); it is capped at the limit, so even the costliest request
        fits in an empty window.
        """
        if not keys:
            raise ValueError("hit() needs at least one key")
        if not isinstance(cost, int) or isinstance(cost, bool) or cost < 1:
            raise ValueError(f"cost must be a whole number >= 1, got {cost!r}")
        if self._item is None:
            return 0.0
        cost = min(cost, self.limit.requests)
        unique = list(dict.fromkeys(keys))
        with self._lock:
            full = [key for key in unique if not self._window.test(self._item, key, cost=cost)]
            if full:
                now = time.time()  # the clock of limits' memory storage
                resets = [self._window.get_window_stats(self._item, key).reset_time for key in full]
                return max(1e-3, max(resets) - now)
            for key in unique:
                if not self._window.hit(self._item, key, cost=cost):
                    # limits counts an entry exactly one period old as still in the window when it hits, and as
                    # gone when it tests: at that instant the request waits a moment.
                    return 1.0
            return 0.0


def parse_trusted_proxies(text: str) -> list[str]:
    """Read a comma-separated setting of proxy IPs/CIDR networks; a blank setting trusts no proxy.

    Checked at start-up so a typo fails loudly instead of silently trusting (or distrusting) every visitor.
    """
    entries = [entry.strip() for entry in text.split(",") if entry.strip()]
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(
                f"Trusted proxy {entry!r} is not an IP address or CIDR network (e.g. '10.0.0.0/8', '127.0.0.1', '::1')"
            ) from None
    return entries


def canonical_address(host: str | None) -> str:
    """A client address written one way (IPv4-mapped IPv6 as IPv4), so one visitor cannot get several limit keys
    by spelling an address differently; "unknown" when there is none."""
    if host is None:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)
