"""Application-level liveness of a long-lived connection (pure logic, no I/O).

TCP does not tell a silent peer from a dead one: a NAT or firewall that forgot a connection
drops its packets without a FIN or an RST, and a subscribed Redis connection then waits for
the next message forever. So whoever holds such a connection asks for a sign of life when
nothing has arrived for a while (a PING; Redis answers a subscribed connection with a `pong`
message) and gives the connection up when even that goes unanswered.
"""

from __future__ import annotations

import time
from collections.abc import Callable

PING_EVERY_SECS = 1.0  # silence this long (no message, no pong) and we ask for a sign of life
SILENT_SECS = 5.0  # silence this long, pings unanswered, and the connection counts as dead


class ConnectionSilent(Exception):
    """Nothing, not even the answer to a PING, arrived for `SILENT_SECS`: the peer is gone."""


class Liveness:
    """When to ping, and when to give up. Call `heard()` whenever anything arrives, `pinged()`
    after sending a ping, and check `ping_due()` and `silent()` on every turn of the reader."""

    def __init__(self, ping_every: float = PING_EVERY_SECS, silent_after: float = SILENT_SECS,
                 clock: Callable[[], float] = time.monotonic):
        self.ping_every = ping_every
        self.silent_after = silent_after
        self.clock = clock
        self.last_heard = clock()
        self.last_ping = float("-inf")

    def reset(self) -> None:
        """A fresh connection: it counts as heard now."""
        self.last_heard = self.clock()
        self.last_ping = float("-inf")

    def heard(self) -> None:
        self.last_heard = self.clock()

    def pinged(self) -> None:
        self.last_ping = self.clock()

    def ping_due(self) -> bool:
        """Nothing heard for `ping_every`, and no ping sent since then."""
        now = self.clock()
        return now - self.last_heard >= self.ping_every and now - self.last_ping >= self.ping_every

    def silent(self) -> bool:
        return self.clock() - self.last_heard > self.silent_after

    def silence_secs(self) -> float:
        return self.clock() - self.last_heard

    def check(self) -> None:
        """Raise ConnectionSilent if the connection is silent."""
        if self.silent():
            raise ConnectionSilent(f"nothing heard for {self.silence_secs():.1f}s (limit {self.silent_after:g}s)")
