"""The Socket.IO message queue (control plane) on Redis, with a listener that notices a silent
connection.

python-socketio's `RedisManager` listens with `PubSub.listen()`, which blocks on the socket
with no timeout: when a NAT or firewall forgets the connection (no FIN, no RST), the listener
waits forever, and every control message (the `kite_account` notices to operators, emits from
other processes) is lost without a word. `LiveRedisManager` keeps everything of the library's
manager but its listening loop, which reads with a timeout, pings when the connection has been
quiet and reconnects when even the pings go unanswered (`ticker.bus.liveness`).

Its connections come from a bounded pool that waits, as the rest of the service's do, and speak
TLS to a `rediss://` URL with the service's certificate settings (`ticker.bus.connection.tls_options`).
Processes that hold no sockets emit through it too, write-only (`emitter`): Flask-SocketIO's
`SocketIO(message_queue=url)` would take a `redis+sentinel://` URL for kombu's and fail.

Relies on python-socketio 5.x internals (checked with 5.18.1): `RedisManager._redis_connect`
sets `self.redis`, `self.pubsub` and `self.connected` (this replaces it, for every form of
`REDIS_URL`: `ticker.bus.connection.connection_pool`), `_publish` uses `self.redis`, and `_listen` consumes
`_redis_listen_with_retries()`, a generator of redis-py message dicts. tests/web/test_dead_peers.py
proves the behaviour with a black-holed connection, so an upgrade that changes them fails there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import redis
import socketio
from flask_socketio import SocketIO

from ticker import metrics
from ticker.bus.connection import MasterMoved, check_master, connection_options, connection_pool, tls_options
from ticker.bus.liveness import PING_EVERY_SECS, ConnectionSilent, Liveness
from ticker.config import Config

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 8  # control messages only: a few publishes at a time, and the listener's one
RETRY_FIRST_SECS = 1.0
RETRY_MAX_SECS = 30.0


class LiveRedisManager(socketio.RedisManager):
    """A `socketio.RedisManager` whose listener survives a connection that went silent."""

    def __init__(self, url: str, channel: str, write_only: bool = False):
        # Liveness is checked here, not by redis-py's health checks.
        options = {**connection_options(), **tls_options(url), "health_check_interval": 0}
        super().__init__(url, channel=channel, write_only=write_only, redis_options=options)

    @classmethod
    def emitter(cls, url: str, channel: str) -> SocketIO:
        """A write-only `SocketIO` that posts to the replicas' message queue at `url`, for
        processes that hold no sockets (workers, beat, the CLI)."""
        return SocketIO(message_queue=url, client_manager=cls(url, channel=channel, write_only=True))

    def _redis_connect(self) -> None:
        # A bounded pool that waits, as every other client of the service (ticker.bus.connection):
        # redis-py's default pool refuses the 101st concurrent publish.
        # Behind Sentinel too (python-socketio's own Sentinel support is in the method replaced here).
        pool = connection_pool(self.redis_url, MAX_CONNECTIONS, Config.REDIS_POOL_WAIT_SECS, **self.redis_options)
        self.redis = redis.Redis(connection_pool=pool)
        # Subscribe confirmations and pongs must reach the loop: they are signs of life.
        self.pubsub = self.redis.pubsub()
        self.connected = True

    def _redis_listen_with_retries(self) -> Iterator[dict[str, Any]]:
        self.retry_secs = RETRY_FIRST_SECS
        while True:
            try:
                self._redis_connect()
                self.pubsub.subscribe(self.channel)
                yield from self._messages()
            except ConnectionSilent as exc:
                self._lost("silent", exc)
            except MasterMoved as exc:
                self._lost("failover", exc)
            except Exception as exc:  # noqa: BLE001  (any failure: a new connection, after a pause)
                self._lost("error", exc)

    def _lost(self, reason: str, exc: Exception) -> None:
        metrics.MESSAGE_QUEUE_RECONNECTS.labels(reason=reason).inc()
        log.warning("Socket.IO message queue lost (%s: %s); reconnecting in %gs", type(exc).__name__, exc,
                    self.retry_secs)
        self._close_quietly()
        time.sleep(self.retry_secs)
        self.retry_secs = min(RETRY_MAX_SECS, self.retry_secs * 2)

    def _messages(self) -> Iterator[dict[str, Any]]:
        liveness = Liveness()
        while True:
            message = self.pubsub.get_message(timeout=PING_EVERY_SECS)
            if message is not None:
                liveness.heard()
                if message["type"] == "subscribe":
                    self.retry_secs = RETRY_FIRST_SECS
                elif message["type"] == "message":
                    yield message
                continue
            liveness.check()
            check_master(self.pubsub.connection)  # behind Sentinel: the master may have moved
            if liveness.ping_due():
                self.pubsub.ping()
                liveness.pinged()

    def _close_quietly(self) -> None:
        try:
            if self.pubsub is not None:
                self.pubsub.close()
        except Exception:  # noqa: BLE001  (closing a dead connection may fail any way it likes)
            pass
