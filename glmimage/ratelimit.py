"""Per-visitor limits for a shared GPU: how often one visitor may generate, counted by an address they cannot forge.

A public Space has one GPU and one queue. Without limits a single visitor (or a script) can fill the queue and
everyone else waits. This module holds the pieces the UI wires together, with no gradio import:

- `RateLimit`: a parsed "6/minute" setting.
- `SlidingWindowLimiter`: refuses a request when a key (client IP, session id) has used up its requests in the
  last period, and says how long to wait.
- `client_ip` / `parse_trusted_proxies`: the visitor's address, believing X-Forwarded-For only from proxies we
  were told to trust, so a visitor cannot pick a fresh address per request.
"""

from __future__ import annotations

import ipaddress
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

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
_FORWARDED_FOR = "x-forwarded-for"


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


class SlidingWindowLimiter:
    """Sliding-window log limiter keyed by arbitrary strings (client IP, session id). Thread-safe (a lock).

    A sliding log (one timestamp per admitted request) is exact: unlike fixed windows it never admits a double
    burst across a window boundary, and it can say exactly when the next request will fit.

    Memory is bounded in three ways:
    - a key's timestamps older than the period are dropped whenever that key is checked;
    - keys whose newest timestamp is older than the period are dropped on every `check` (keys are kept ordered
      by their last admitted request, so this only looks at the stalest ones);
    - if more than `max_keys` keys are still tracked, the stalest keys (least recently admitted) are evicted.
      An evicted key forgets its history and gets a fresh allowance; that only happens when more than
      `max_keys` distinct keys were admitted within one period, and is the price of a hard memory cap.
    """

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys}")
        self.limit = limit
        self._clock = clock
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()

    def check(self, *keys: str, cost: int = 1) -> float:
        """Admit one request counted against every key, or say how long to wait.

        All-or-nothing so that a request refused because of one key (say the session) does not use up
        another key's allowance (say the IP). Returns 0.0 when admitted, else the seconds (> 0) until the
        most-limited key has room again. A disabled limit always returns 0.0.

        ``cost`` counts the request as that many requests (a costly generation uses more of the allowance); it is
        capped at the limit, so even the costliest request fits in an empty window.
        """
        if not keys:
            raise ValueError("check() needs at least one key")
        if not isinstance(cost, int) or isinstance(cost, bool) or cost < 1:
            raise ValueError(f"cost must be a whole number >= 1, got {cost!r}")
        if not self.limit.enabled:
            return 0.0
        cost = min(cost, self.limit.requests)
        period = self.limit.period_s
        unique_keys = list(dict.fromkeys(keys))  # the same string twice is one client, counted once
        with self._lock:
            now = self._clock()
            self._drop_stale_keys(now)
            retry_after = 0.0
            for key in unique_keys:
                hits = self._hits.get(key)
                if hits is None:
                    continue
                while hits and hits[0] + period <= now:
                    hits.popleft()
                if not hits:
                    del self._hits[key]
                elif len(hits) + cost > self.limit.requests:
                    # The request fits once enough of the oldest hits have left the window.
                    oldest_to_expire = hits[len(hits) - self.limit.requests + cost - 1]
                    retry_after = max(retry_after, oldest_to_expire + period - now)
            if retry_after > 0:
                return retry_after
            for key in unique_keys:
                hits = self._hits.setdefault(key, deque())
                hits.extend([now] * cost)
                self._hits.move_to_end(key)
            while len(self._hits) > self._max_keys:
                self._hits.popitem(last=False)
            return 0.0

    def reset(self) -> None:
        """Forget every key, e.g. when an admin changes the limit."""
        with self._lock:
            self._hits.clear()

    def __len__(self) -> int:
        """How many keys are tracked; lets operators and tests see that memory stays bounded."""
        with self._lock:
            return len(self._hits)

    def _drop_stale_keys(self, now: float) -> None:
        # Keys are ordered by their newest hit, so the first key whose newest hit is recent ends the sweep.
        while self._hits:
            key, hits = next(iter(self._hits.items()))
            if hits[-1] + self.limit.period_s > now:
                return
            del self._hits[key]


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address, or None when `text` is not one. IPv4-mapped IPv6 ("::ffff:1.2.3.4") becomes IPv4, so
    one visitor has one key and matches IPv4 trusted networks."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_ip(peer_host: str | None, headers: Mapping[str, str], trusted_proxies: Sequence[str]) -> str:
    """The visitor's address, for rate-limit keys.

    X-Forwarded-For is believed only when the direct peer is a trusted proxy: walk the header's list right to
    left, skipping addresses that are themselves trusted proxies, and return the first untrusted one.
    `trusted_proxies` holds IPs or CIDR networks ("10.0.0.0/8", "127.0.0.1", "::1"); an empty list means the
    header is ignored entirely and `peer_host` is returned. Header lookup is case-insensitive. Malformed entries
    in the header are skipped. `peer_host` None gives "unknown".

    Why right to left: each trusted proxy appends the address it received from, so the rightmost entries are
    the ones our proxies wrote; anything left of the first untrusted entry was written by the visitor and can
    be forged. If every well-formed entry is a trusted proxy, the request came from inside the trusted network
    and the leftmost entry is returned. Addresses come back in canonical form ("2001:db8::1"), so one visitor
    cannot get several rate-limit keys by spelling an address differently.
    """
    if peer_host is None:
        return "unknown"
    peer = _parse_ip(peer_host)
    if not trusted_proxies or peer is None:
        return peer_host if peer is None else str(peer)
    networks = [ipaddress.ip_network(entry.strip(), strict=False) for entry in trusted_proxies]

    def is_trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address in network for network in networks)

    if not is_trusted(peer):
        return str(peer)
    # Several X-Forwarded-For headers are one list, in order (RFC 9110 field combination).
    header = ",".join(value for name, value in headers.items() if name.lower() == _FORWARDED_FOR)
    forwarded = [address for address in map(_parse_ip, header.split(",")) if address is not None]
    for address in reversed(forwarded):
        if not is_trusted(address):
            return str(address)
    return str(forwarded[0]) if forwarded else str(peer)


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
