"""Per-source token buckets, shared by TURN (401s and 438s per client address) and signaling
(``/ice`` per client address), and the failure backoff TURN applies to password guessing.

Sans-IO: the caller passes ``now``. Bounded: at most ``max_sources`` buckets are kept and the
oldest are forgotten first, so a flood of spoofed or rotating sources costs bounded memory and,
at worst, a fresh (full) bucket for a forgotten source.
"""

from __future__ import annotations

from collections import OrderedDict

#: Every rate the appliance limits (401s, /ice, signaling messages) allows a burst of this many
#: seconds' worth: room for a page load or an ICE restart, nothing like a flood.
BURST_SECONDS = 2.0


def burst_for(rate: float) -> float:
    """The burst that goes with ``rate`` (:data:`BURST_SECONDS` of it)."""
    return BURST_SECONDS * rate


class RateLimiter:
    """Token buckets per source IP, bounded in size: the oldest entries are forgotten first, so a
    flood of spoofed sources costs memory ``max_sources`` at most."""

    __slots__ = ("_buckets", "burst", "max_sources", "rate")

    def __init__(self, rate: float, burst: float, max_sources: int = 10_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @classmethod
    def per_second(cls, rate: float) -> RateLimiter:
        """A limiter of ``rate`` per second per source, with the usual burst (``burst_for``)."""
        return cls(rate, burst_for(rate))

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


class FailureBackoff:
    """Exponential backoff per key after repeated failures (online password guessing).

    A key may fail ``threshold`` times; each failure after that blocks it for ``base`` seconds,
    doubled per further failure up to ``cap``. A key that has not failed for ``forget`` seconds
    starts over, and at most ``max_keys`` keys are kept (the oldest forgotten first), so a flood
    of fresh keys costs bounded memory. Sans-IO: the caller passes ``now``.
    """

    __slots__ = ("_keys", "base", "cap", "forget", "max_keys", "threshold")

    def __init__(
        self,
        threshold: int,
        *,
        base: float = 1.0,
        cap: float = 60.0,
        forget: float = 600.0,
        max_keys: int = 10_000,
    ) -> None:
        self.threshold = threshold
        self.base = base
        self.cap = cap
        self.forget = forget
        self.max_keys = max_keys
        # key -> (failures, blocked until, last failure)
        self._keys: OrderedDict[str, tuple[int, float, float]] = OrderedDict()

    def blocked(self, key: str, now: float) -> bool:
        """Whether ``key`` is inside a backoff period."""
        entry = self._keys.get(key)
        return entry is not None and entry[1] > now

    def failed(self, key: str, now: float) -> None:
        """Record a failure of ``key`` (and start or lengthen its backoff)."""
        failures, _, last = self._keys.pop(key, (0, 0.0, now))
        if now - last > self.forget:
            failures = 0
        failures += 1
        over = failures - self.threshold
        until = now + min(self.cap, self.base * 2 ** min(over - 1, 32)) if over > 0 else 0.0
        self._keys[key] = (failures, until, now)
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)

    def forgive(self, key: str) -> None:
        """``key`` succeeded: its count starts over."""
        self._keys.pop(key, None)

    def blocked_until(self, key: str) -> float:
        """When ``key``'s backoff ends (0.0 when it has none)."""
        entry = self._keys.get(key)
        return entry[1] if entry is not None else 0.0

    def block(self, key: str, until: float, now: float) -> None:
        """Back ``key`` off until ``until`` at least: a backoff another process decided (the
        TURN workers share one for static users, docs/workers.md)."""
        failures, blocked, _ = self._keys.pop(key, (self.threshold, 0.0, now))
        self._keys[key] = (max(failures, self.threshold), max(blocked, until), now)
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)
