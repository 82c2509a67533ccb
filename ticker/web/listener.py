"""Reads tick batches from Redis and hands them to local delivery.

Each replica reads each batch once and delivers it to its own clients only, so the data plane
never goes back through the Socket.IO message queue to every other replica. The listener
subscribes only to the channels (token buckets) its own clients need, keeps a bucket a while
after its last client left (a client that comes back finds it ready), and tells subscribers
when a bucket is live, so a snapshot read after that misses no tick.

Live candles (ticker.candles) travel on channels of their own, bucketed like the ticks': the
listener subscribes the candle buckets `needed_candle_buckets()` names on the same connection
and hands their messages to `deliver_candles`. They leave the tick path as it was: a candle
message is not a tick bucket, so it takes the slower general branch.

Its connection is watched at the application level (`ticker.bus.liveness`): when nothing has
arrived for a second it sends a PING, and when nothing at all (not even the pong) has arrived
for `SILENT_SECS` it drops the connection and subscribes again on a new one. A connection that a
NAT or firewall forgot is noticed within that bound, counted
(`ticker_bus_listener_reconnects_total{reason="silent"}`) and shown in /health. Behind Sentinel, a
connection to a master that is one no more (a failover while it stayed up) is given up as soon
as the process hears of the new one (`reason="failover"`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from ticker import metrics
from ticker.bus import keys
from ticker.bus.connection import MasterMoved, check_master, pool_like
from ticker.bus.liveness import ConnectionSilent, Liveness
from ticker.bus.ticks import unpack

log = logging.getLogger(__name__)

POLL_SECS = 0.2  # longest wait for Redis when nothing is pending
RETRY_FLUSH_SECS = 0.02  # a client is behind: try its outbox again this soon
READ_SECS = 5.0  # a message that has begun to arrive: longest wait for the rest of it
BUCKET_LINGER_SECS = 30.0  # keep a bucket this long after its last local client left
MAX_BATCHES_PER_FLUSH = 200  # under a flood, still flush (and let sockets write) regularly
RETRY_SECS = 1.0  # Redis unreachable: try again this often, forever


class TickListener:
    """`needed_buckets()` says which channels this replica's clients need; `deliver(batch)`
    queues a batch (`ticker.bus.ticks.unpack`: rows and encoded ticks), `flush()` sends what
    is queued and says whether anything still waits;
    `on_notice(channel, payload)` gets control notices (registry reloads)."""

    def __init__(
        self,
        client: redis.Redis,
        wake_channel: str,
        needed_buckets: Callable[[], set[int]],
        deliver: Callable[[list[dict]], None],
        flush: Callable[[], bool],
        on_notice: Callable[[str, Any], None],
        sleep: Callable[[float], None] = time.sleep,
        create_event: Callable[[], Any] = threading.Event,
        needed_candle_buckets: Callable[[], set[int]] = set,
        deliver_candles: Callable[[bytes], None] = lambda _batch: None,
    ):
        self.redis = client
        # Batches are read as bytes and their ticks forwarded as they are: a connection of its
        # own that does not decode replies, and whose liveness this listener checks itself.
        # (The same server, or behind Sentinel the same master, as the client's: pool_like.)
        self.raw = redis.Redis(connection_pool=pool_like(client.connection_pool, max_connections=4,
                                                         decode_responses=False, health_check_interval=0))
        self.wake_channel = wake_channel
        self.needed_buckets = needed_buckets
        self.deliver = deliver
        self.flush = flush
        self.on_notice = on_notice
        self.sleep = sleep
        self.live: set[int] = set()  # buckets whose subscription Redis confirmed
        self.requested: set[int] = set()
        self.unneeded_since: dict[int, float] = {}
        self.dirty = True  # set when demand changes; the loop then syncs its channels
        self._next_sync = 0.0  # when the loop next syncs its channels whether or not dirty (monotonic)
        self.buckets = {channel.encode(): bucket for bucket, channel in enumerate(keys.TICK_CHANNELS)}
        self.notices = {keys.REGISTRY_RELOADED.encode()}
        self.batches = 0
        self.needed_candle_buckets = needed_candle_buckets
        self.deliver_candles = deliver_candles
        self.candle_buckets = {channel.encode(): bucket for bucket, channel in enumerate(keys.CANDLE_CHANNELS)}
        self.candles_live: set[int] = set()
        self.candles_requested: set[int] = set()
        self.candles_unneeded_since: dict[int, float] = {}
        self.create_event = create_event
        # (buckets, event, candles?) of subscribes waiting for their channels
        self.waiters: list[tuple[set[int], Any, bool]] = []
        self.liveness = Liveness()
        self.connected = False  # subscribed, and heard from within the liveness bound
        self.down_since: float | None = time.monotonic()  # not connected yet
        self.reconnects = 0
        self.last_failure: str | None = None

    def run_forever(self) -> None:
        while True:
            try:
                self._run()
            except ConnectionSilent as exc:
                self._restart("silent", f"connection silent: {exc}")
            except MasterMoved as exc:
                self._restart("failover", str(exc))
            except redis.RedisError as exc:
                self._restart("error", f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # noqa: BLE001  (a bug must not end delivery for good)
                log.exception("tick listener failed; restarting it")
                self._restart("bug", f"{type(exc).__name__}: {exc}")

    def _restart(self, reason: str, detail: str) -> None:
        log.warning("tick listener lost Redis (%s); subscribing again on a new connection", detail)
        if self.connected:
            self.down_since = time.monotonic()
        self.connected = False
        self.last_failure = detail
        self.reconnects += 1
        metrics.BUS_LISTENER_RECONNECTS.labels(reason=reason).inc()
        metrics.BUS_LISTENER_UP.set(0)
        self.live.clear()
        self.requested.clear()
        self.candles_live.clear()
        self.candles_requested.clear()
        self.dirty = True
        self.sleep(RETRY_SECS)

    def report(self) -> dict[str, Any]:
        """For /health: whether ticks can reach this replica now, and since when not."""
        now = time.monotonic()
        report: dict[str, Any] = {"ok": self.connected, "reconnects": self.reconnects,
                                  "silence_secs": round(self.liveness.silence_secs(), 2)}
        if not self.connected:
            report["down_secs"] = round(now - (self.down_since or now), 2)
            report["reason"] = f"the tick listener is not receiving from Redis ({self.last_failure or 'connecting'})"
        return report

    def unheard_buckets(self) -> set[int]:
        """Buckets needed but not heard from while the listener as a whole is connected (a
        lost master of a cluster tick bus); one Redis is all or nothing (`connected`)."""
        return set()

    def wait_live(self, buckets: set[int], timeout: float, candles: bool = False) -> bool:
        """Block (cooperatively) until every bucket's channel (tick channels, or with `candles`
        candle channels) is subscribed, or `timeout`; True if they are."""
        live = self.candles_live if candles else self.live
        if buckets <= live:
            return True
        self.dirty = True
        waiter = (buckets, self.create_event(), candles)
        self.waiters.append(waiter)
        try:
            try:
                self.redis.publish(self.wake_channel, "sync")  # wake the listener's read now
            except redis.RedisError:
                pass  # it looks at `dirty` within POLL_SECS anyway
            return bool(waiter[1].wait(timeout)) or buckets <= live
        finally:
            self.waiters.remove(waiter)

    def _wake_waiters(self) -> None:
        for buckets, event, candles in self.waiters:
            if buckets <= (self.candles_live if candles else self.live):
                event.set()

    def _run(self) -> None:
        pubsub = self.raw.pubsub()
        try:
            self._listen(pubsub)
        finally:
            pubsub.close()  # its connection goes back to the pool, not leaked per restart

    def _listen(self, pubsub) -> None:
        self.liveness.reset()
        pubsub.subscribe(self.wake_channel, keys.REGISTRY_RELOADED)
        self._next_sync = 0.0
        while True:
            now = time.monotonic()
            self._sync_if_due(pubsub, now)
            pending = self.flush()
            message = self._read(pubsub, RETRY_FLUSH_SECS if pending else POLL_SECS)
            if message is not None:
                self._drain(pubsub, message)
            self.flush()
            self._check_alive(pubsub)
            self.sleep(0)  # let the sockets' writers send what was just queued

    def _check_alive(self, pubsub) -> None:
        """Ask for a sign of life when the connection has been quiet; give it up when silent, or
        when Sentinel named another master (the old one may still be up, and hear nothing)."""
        self.liveness.check()
        check_master(pubsub.connection)
        if self.liveness.ping_due():
            pubsub.ping()
            self.liveness.pinged()

    def _read(self, pubsub, wait: float) -> dict | None:
        """The next message, waiting at most `wait` for one to begin arriving. Once it has, it
        is read whole: redis-py reads it with the same timeout it waited with, and on a timeout
        in mid-message (a batch larger than one socket read, `wait` 0) it reconnects, and the
        rest of that message and every batch published meanwhile are lost."""
        if not pubsub.connection.can_read(timeout=wait):
            return None
        message = pubsub.get_message(timeout=READ_SECS)
        self.liveness.heard()
        return message

    def _drain(self, pubsub, first: dict) -> None:
        """Handle `first` and every message already arriving behind it, up to
        `MAX_BATCHES_PER_FLUSH` batches. Those are taken straight off the connection: handing a
        tick batch over through redis-py's PubSub cost more than delivering it (a burst is a
        batch per bucket). Anything else still goes through PubSub, which keeps the state of
        the subscriptions and of its health checks."""
        count = self._handle(first)
        connection = pubsub.connection
        while count < MAX_BATCHES_PER_FLUSH and connection.can_read(timeout=0):
            response = connection.read_response(timeout=READ_SECS, disconnect_on_error=False, push_request=True)
            self.liveness.heard()
            bucket = self.buckets.get(response[1]) if response[0] == b"message" else None
            if bucket is not None:
                count += self._deliver(response[2])
            elif pubsub.is_health_check_response(response):
                pubsub.health_check_response_counter -= 1
            else:
                message = pubsub.handle_message(response)
                if message is not None:
                    count += self._handle(message)

    def _deliver(self, batch: bytes) -> int:
        self.batches += 1
        self.deliver(unpack(batch))
        return 1

    def _handle(self, message: dict) -> int:
        kind, channel = message["type"], message["channel"]
        bucket = self.buckets.get(channel)
        if kind == "message" and bucket is not None:
            return self._deliver(message["data"])
        if kind == "subscribe" and bucket is not None:
            self.live.add(bucket)
            self._wake_waiters()
        elif kind == "subscribe" and channel == self.wake_channel.encode():
            self._connected()
        elif kind == "message" and channel in self.candle_buckets:
            self.deliver_candles(message["data"])
        elif kind == "subscribe" and channel in self.candle_buckets:
            self.candles_live.add(self.candle_buckets[channel])
            self._wake_waiters()
        elif kind == "message" and channel in self.notices:
            self._notice(channel.decode(), message["data"])
        elif kind == "message" and channel == self.wake_channel.encode():
            self.dirty = True
        return 0

    def _connected(self) -> None:
        if not self.connected:
            log.info("tick listener subscribed%s", f" again after {self.reconnects} reconnects" if self.reconnects
                     else "")
        self.connected = True
        self.down_since = None
        metrics.BUS_LISTENER_UP.set(1)

    def _notice(self, channel: str, data: bytes) -> None:
        try:
            self.on_notice(channel, json.loads(data))
        except Exception:  # noqa: BLE001  (a bad notice must not stop the ticks)
            log.exception("could not apply notice on %s", channel)

    def _sync_if_due(self, pubsub, now: float) -> None:
        """`_sync` at once when a subscribe marked the listener dirty, else once a second."""
        if self.dirty or now >= self._next_sync:
            self.dirty = False
            self._next_sync = now + 1.0
            self._sync(pubsub, now)

    def _sync(self, pubsub, now: float) -> None:
        _sync_buckets(pubsub, now, self.needed_buckets(), self.requested, self.live, self.unneeded_since,
                      keys.tick_channel)
        _sync_buckets(pubsub, now, self.needed_candle_buckets(), self.candles_requested, self.candles_live,
                      self.candles_unneeded_since, keys.candle_channel)


def _sync_buckets(pubsub, now: float, needed: set[int], requested: set[int], live: set[int],
                  unneeded_since: dict[int, float], channel: Callable[[int], str]) -> None:
    """Subscribe the `needed` buckets not yet `requested`; unsubscribe those unneeded for
    BUCKET_LINGER_SECS. Updates `requested`, `live` and `unneeded_since` in place."""
    for bucket in needed:
        unneeded_since.pop(bucket, None)
    for bucket in requested - needed:
        unneeded_since.setdefault(bucket, now)
    add = needed - requested
    drop = {b for b, since in unneeded_since.items() if now - since >= BUCKET_LINGER_SECS}
    if add:
        pubsub.subscribe(*(channel(b) for b in add))
        requested |= add
    if drop:
        pubsub.unsubscribe(*(channel(b) for b in drop))
        requested -= drop
        live -= drop
        for bucket in drop:
            del unneeded_since[bucket]
