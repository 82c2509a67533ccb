"""How many client requests a replica works on at once: the rest wait their turn, then are shed.

A crowd (thousands of clients connecting and subscribing in the same second, after a restart or
at the market open) arrives as thousands of greenlets, each a few Redis round trips from done.
Let all of them run and every round trip waits behind every other greenlet's turn, so each
holds its Redis connection for as long as the whole crowd takes to go round: throughput falls
as the crowd grows, the pool runs dry and the replica's own loops (the tick listener among
them) starve. So connects, client messages and disconnects pass a gate: at most
`MAX_CONCURRENT_REQUESTS` at a time; the others wait, in order, costing a blocked greenlet each,
up to `REQUEST_QUEUE_WAIT_SECS`, after which a connect or message is refused with the
documented `server_busy` (a disconnect always waits: a departing client is never refused).

Under gevent and eventlet the `threading` module is monkey-patched, so the semaphore is green.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ticker import metrics


class Busy(Exception):
    """The request waited `wait_secs` for its turn without getting one: shed it."""


class AdmissionGate:
    """At most `limit` requests work at once; others wait up to `wait_secs` for a turn."""

    def __init__(self, limit: int, wait_secs: float):
        self.limit = limit
        self.wait_secs = wait_secs
        self._turns = threading.BoundedSemaphore(limit)
        self.waiting = 0

    @contextmanager
    def turn(self, kind: str, shed: bool = True) -> Iterator[None]:
        """Hold a turn for the body. Raises Busy (and counts `kind` as shed) if none came within
        `wait_secs`; with `shed=False`, waits as long as it takes."""
        self.waiting += 1
        metrics.REQUESTS_WAITING.inc()
        try:
            got = self._turns.acquire(timeout=self.wait_secs if shed else None)
        finally:
            self.waiting -= 1
            metrics.REQUESTS_WAITING.dec()
        if not got:
            metrics.REQUESTS_SHED.labels(kind=kind).inc()
            raise Busy(f"no turn within {self.wait_secs:g}s: {self.limit} requests were being worked on")
        try:
            yield
        finally:
            self._turns.release()
