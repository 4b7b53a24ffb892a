"""Per-source token buckets, shared by TURN (401s and 438s per client address) and signaling
(``/ice`` per client address).

Sans-IO: the caller passes ``now``. Bounded: at most ``max_sources`` buckets are kept and the
oldest are forgotten first, so a flood of spoofed or rotating sources costs bounded memory and,
at worst, a fresh (full) bucket for a forgotten source.
"""

from __future__ import annotations

from collections import OrderedDict


class RateLimiter:
    """Token buckets per source IP, bounded in size: the oldest entries are forgotten first, so a
    flood of spoofed sources costs memory ``max_sources`` at most."""

    __slots__ = ("_buckets", "burst", "max_sources", "rate")

    def __init__(self, rate: float, burst: float, max_sources: int = 10_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, source_ip: str, now: float) -> bool:
        """Take one token for ``source_ip``; False when its bucket is empty."""
        if self.rate <= 0:
            return True
        tokens, stamp = self._buckets.pop(source_ip, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - stamp) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[source_ip] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
        return allowed
