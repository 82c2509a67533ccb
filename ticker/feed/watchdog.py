"""The lease watchdog: no upstream connection outlives its shard's lease, whatever the shard
is blocked on.

A shard renews its lease from its main loop. If that loop is stuck (a Redis call that hangs,
a connect or handshake that crawls, a long garbage-collection pause), the lease can run out
in Redis while the Kite connection stays open, and another worker, now holding the lease,
opens a second connection for the same slot: on a key with every slot busy, a fourth
connection, which Kite refuses. The watchdog is a plain thread in the shard's process (shard
tasks run in Celery prefork children: nothing is monkey-patched there) that shuts the
guarded connection's socket down the moment the lease's local validity
(`ShardLease.remaining`) runs out. The main loop then sees the connection end, as after any
drop, and renews or stops.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from ticker.bus.lease import ShardLease

log = logging.getLogger(__name__)

POLL_SECS = 0.1  # how late the watchdog may act; well inside the lease's safety margin


class Abortable(Protocol):
    def abort(self) -> bool:
        """Shut the socket down from another thread; True if there was one to shut."""


class LeaseWatchdog:
    """Watches one lease; `guard(connection)` puts a connection under it, `guard(None)` none.

    `closes` counts the connections it shut down. `start()` once, `stop()` at the end.
    """

    def __init__(self, lease: ShardLease):
        self.lease = lease
        self.closes = 0
        self._connection: Abortable | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-watchdog {lease.slot}", daemon=True)

    def start(self) -> LeaseWatchdog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(1)

    def guard(self, connection: Abortable | None) -> None:
        with self._lock:
            self._connection = connection

    def _run(self) -> None:
        while not self._stopped.wait(POLL_SECS):
            if self.lease.remaining() <= 0:
                self._close_guarded()

    def _close_guarded(self) -> None:
        with self._lock:
            connection, self._connection = self._connection, None
        if connection is not None and connection.abort():
            self.closes += 1
            log.warning("shard %s: lease not renewed in time; upstream connection shut down", self.lease.slot)
