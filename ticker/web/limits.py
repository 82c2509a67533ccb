"""Rate limits (pure logic, no I/O): a token bucket per connection for its messages, and a
one-second window per client address for connection attempts."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """Allows `rate` events a second on average, with bursts of up to `burst`."""

    __slots__ = ("rate", "burst", "tokens", "stamp", "clock")

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self.tokens = self.burst
        self.clock = clock
        self.stamp = clock()

    def allow(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class AttemptWindow:
    """Counts attempts per key in the current second; forgets every key each new second, so
    its memory is bounded by one second's worth of distinct addresses."""

    def __init__(self, per_second: float, clock: Callable[[], float] = time.monotonic):
        self.per_second = per_second
        self.clock = clock
        self.second = int(clock())
        self.counts: dict[str, int] = {}

    def allow(self, key: str) -> bool:
        second = int(self.clock())
        if second != self.second:
            self.second, self.counts = second, {}
        self.counts[key] = self.counts.get(key, 0) + 1
        return self.counts[key] <= self.per_second
