"""The tick listener for a tick bus on a Redis Cluster (`Config.TICK_BUS_URL`).

Each bucket's channel lives on the master that owns its hash slot (ticker.bus.sharded). The
listener holds one connection per master that owns a bucket its clients need, and
`SSUBSCRIBE`s the buckets there; masters owning nothing it needs get no connection. Control
notices (registry reloads, the replica's own wake-up) stay on `REDIS_URL`, on the connection
`TickListener` keeps for them. One loop waits on every connection at once (`select`, which
gevent and eventlet make cooperative) and reads batches raw, as `TickListener` does. A shard's
flush reaches the masters at slightly different moments; each batch names its flush's buckets
(`ticker.bus.sharded.flush_mark`), and the loop delivers once it holds every batch of that
flush it subscribes to (at most `COALESCE_SECS` later), so a client gets one frame per flush.

Each master's connection is watched on its own (`ticker.bus.liveness`): a PING after a second
of quiet, given up after `SILENT_SECS` without a word. A connection that fails (an error, a
refused connect, silence, a MOVED reply to a subscribe) or that the server unsubscribes (its
slot moved to another node: Redis sends `sunsubscribe`) costs only its own buckets: the
listener refreshes the cluster's slot map and subscribes them again where they live now,
retrying every `RETRY_SECS` while a failover is under way. Each loss is counted
(`ticker_bus_listener_reconnects_total`, reason `silent`, `error`, `moved`), /health reports
the listener down until every needed bucket is subscribed again, and the replica tells the
clients of those buckets' tokens `upstream_unavailable` `bus_unavailable` (`unheard_buckets`).
"""

from __future__ import annotations

import logging
import select
import time
from collections import defaultdict
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from ticker import metrics
from ticker.bus import keys
from ticker.bus.connection import connection_options
from ticker.bus.liveness import ConnectionSilent, Liveness
from ticker.bus.sharded import split_mark
from ticker.web.listener import (
    BUCKET_LINGER_SECS,
    MAX_BATCHES_PER_FLUSH,
    POLL_SECS,
    READ_SECS,
    RETRY_FLUSH_SECS,
    RETRY_SECS,
    TickListener,
)

log = logging.getLogger(__name__)


COALESCE_SECS = 0.01  # see _coalesce_wait: the longest a flush's first share waits for the others
CHECK_SECS = 0.1  # how often each master's connection is checked for silence (and pinged)
NODE_TIMEOUT_SECS = 1.0  # a master that has not answered a connect or a command by then is passed over


def quick_options() -> dict:
    """The service's socket options with short timeouts and no retries: a master that stopped
    answering (frozen, partitioned) must not hold up the loop that serves every other master.
    Reads of subscribed messages give their own timeout (READ_SECS); liveness is ours to check."""
    return {**connection_options(), "socket_connect_timeout": NODE_TIMEOUT_SECS,
            "socket_timeout": NODE_TIMEOUT_SECS, "retry_on_timeout": False, "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0}


def slot_owners(host: str, port: int) -> list[tuple[int, int, str, int]]:
    """(first slot, last slot, master host, master port) of every range, as the node at
    host:port sees the cluster (CLUSTER SLOTS). Raises redis.RedisError."""
    client = redis.Redis(host=host, port=port, decode_responses=True, **quick_options())
    try:
        return [(int(first), int(last), str(master[0]) or host, int(master[1]))
                for first, last, master, *_ in client.execute_command("CLUSTER SLOTS")]
    finally:
        client.close()


class NodeFeed:
    """One connection to one cluster master and the buckets SSUBSCRIBEd on it."""

    def __init__(self, name: str, host: str, port: int):
        self.name = name
        self.client = redis.Redis(host=host, port=port, **quick_options())
        self.pubsub = self.client.pubsub()
        self.liveness = Liveness()
        self.requested: set[int] = set()
        self.backlog = False  # its last read stopped with batches still waiting

    # One command per bucket: the channels of one SSUBSCRIBE must share a hash slot (CROSSSLOT).
    def subscribe(self, buckets: set[int]) -> None:
        for bucket in buckets:
            self.pubsub.ssubscribe(keys.SHARDED_TICK_CHANNELS[bucket])
            self.requested.add(bucket)

    def unsubscribe(self, buckets: set[int]) -> None:
        for bucket in buckets:
            self.pubsub.sunsubscribe(keys.SHARDED_TICK_CHANNELS[bucket])
            self.requested.discard(bucket)

    def close(self) -> None:
        try:
            self.pubsub.close()
        finally:
            self.client.connection_pool.disconnect()


class ShardedTickListener(TickListener):
    """`TickListener` reading ticks from a cluster's masters by sharded pub/sub; `cluster` is
    the tick bus client (its slot map says where each bucket lives)."""

    def __init__(self, client: redis.Redis, cluster: RedisCluster, *args: Any, **kwargs: Any):
        super().__init__(client, *args, **kwargs)
        self.cluster = cluster
        self.buckets = {channel.encode(): bucket for bucket, channel in enumerate(keys.SHARDED_TICK_CHANNELS)}
        self.feeds: dict[str, NodeFeed] = {}
        self.node_of: dict[int, str] = {}  # bucket -> the feed it is requested on
        self.slot_map: list[tuple[int, int, str, int]] = []  # empty: to be read (CLUSTER SLOTS)
        self.retry_at = 0.0  # a master was lost: connect again no sooner than this
        self.down_feeds: dict[str, str] = {}  # master -> why its buckets are not subscribed now
        self.flushes: dict[bytes, list[int]] = {}  # this turn's flushes: [their buckets, buckets read] as bits

    # The loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            super()._run()
        finally:
            for feed in list(self.feeds.values()):
                self._close(feed)

    def _restart(self, reason: str, detail: str) -> None:
        for feed in list(self.feeds.values()):  # the control connection failed: start afresh
            self._close(feed)
        self.slot_map = []
        super()._restart(reason, detail)

    def _listen(self, pubsub) -> None:
        self.liveness.reset()
        pubsub.subscribe(self.wake_channel, keys.REGISTRY_RELOADED)
        self._next_sync = next_check = 0.0
        while True:
            now = time.monotonic()
            self._sync_if_due(pubsub, now)
            pending = self.flush()
            ready = self._readable(pubsub, RETRY_FLUSH_SECS if pending else POLL_SECS)
            self.flushes.clear()
            until = time.monotonic() + COALESCE_SECS
            for _round in range(2 * len(self.feeds) + 1):
                if not ready:
                    break
                self._read_sources(pubsub, ready)
                ready = self._readable(pubsub, self._coalesce_wait(until))
            self.flush()
            self._check_alive(pubsub)
            if now >= next_check:  # liveness counts in seconds: no need to look every turn
                next_check = now + CHECK_SECS
                for feed in list(self.feeds.values()):
                    self._guarded(feed, self._check_feed)
            self.sleep(0)

    def _coalesce_wait(self, until: float) -> float:
        """How long to wait for more before delivering what this turn read: while a flush read
        in this turn still misses a batch of a bucket this replica subscribes to (each batch
        names its flush's buckets, `ticker.bus.sharded.flush_mark`), until `until`; else not at
        all. So a client gets one frame per shard flush, as on one Redis, rather than one per
        master, and a flush of one bucket (a quiet market's lone tick) waits for nothing."""
        if not self.flushes:
            return 0.0
        live = sum(1 << bucket for bucket in self.live)
        if any(flush_buckets & live & ~got for flush_buckets, got in self.flushes.values()):
            return max(0.0, until - time.monotonic())
        return 0.0

    def _read_sources(self, pubsub, sources: list[Any]) -> None:
        for source in sources:
            if source is pubsub:
                message = pubsub.get_message(timeout=READ_SECS)
                self.liveness.heard()
                if message is not None:
                    self._drain(pubsub, message)
            else:
                self._guarded(source, self._read_feed)

    def _readable(self, pubsub, wait: float) -> list[Any]:
        """The sources (the control PubSub, feeds) with something to read, waiting at most
        `wait` for one: one `select` over every socket. A feed's buffer is empty after
        `_read_feed` unless it stopped at MAX_BATCHES_PER_FLUSH (`backlog`), so only the
        control connection's buffer is asked (redis-py's `can_read`, a syscall per call)."""
        ready: list[Any] = [feed for feed in self.feeds.values() if feed.backlog]
        if pubsub.connection.can_read(timeout=0):
            ready.append(pubsub)
        sockets = {connection._sock: source for source, connection in
                   ((pubsub, pubsub.connection), *((f, f.pubsub.connection) for f in self.feeds.values()))
                   if connection._sock is not None and source not in ready}
        if not sockets:
            return ready
        readable, _, _ = select.select(list(sockets), [], [], 0 if ready else wait)
        return ready + [sockets[sock] for sock in readable]

    def _guarded(self, feed: NodeFeed, work) -> None:
        if feed.name not in self.feeds:
            return
        try:
            work(feed)
        except ConnectionSilent as exc:
            self._lose(feed, "silent", str(exc))
        except redis.exceptions.MovedError as exc:
            self._lose(feed, "moved", f"MOVED {exc}", retry_in=0.0)
        except redis.RedisError as exc:
            self._lose(feed, "error", f"{type(exc).__name__}: {exc}")

    def _read_feed(self, feed: NodeFeed) -> None:
        """Every message already arriving on the feed, up to MAX_BATCHES_PER_FLUSH batches,
        batches taken straight off the connection (see TickListener._drain)."""
        connection, count = feed.pubsub.connection, 0
        feed.backlog = False
        while count < MAX_BATCHES_PER_FLUSH and connection.can_read(timeout=0):
            response = connection.read_response(timeout=READ_SECS, disconnect_on_error=False, push_request=True)
            feed.liveness.heard()
            bucket = self.buckets.get(response[1]) if response[0] == b"smessage" else None
            if bucket is not None:
                flush, flush_buckets, batch = split_mark(response[2])
                if flush_buckets & (flush_buckets - 1):  # more than one bucket: others may follow
                    self.flushes.setdefault(flush, [flush_buckets, 0])[1] |= 1 << bucket
                count += self._deliver(batch)
                continue
            message = feed.pubsub.handle_message(response)
            if message is not None:
                self._on_feed_message(feed, message)
        feed.backlog = count >= MAX_BATCHES_PER_FLUSH

    def _on_feed_message(self, feed: NodeFeed, message: dict) -> None:
        bucket = self.buckets.get(message["channel"])
        if bucket is None:
            return
        if message["type"] == "ssubscribe" and bucket in feed.requested:
            self.live.add(bucket)
            self._wake_waiters()
            self._feed_up(feed)
        elif message["type"] == "sunsubscribe" and bucket in feed.requested:
            # Not ours to drop: the slot moved (resharding, a failover). Subscribe where it is now.
            log.warning("tick bus: bucket %d left %s; subscribing it where it lives now", bucket, feed.name)
            feed.requested.discard(bucket)
            self._forget({bucket})
            self.slot_map, self.dirty = [], True

    def _check_feed(self, feed: NodeFeed) -> None:
        feed.liveness.check()
        if feed.liveness.ping_due():
            feed.pubsub.ping()
            feed.liveness.pinged()

    # Subscriptions -----------------------------------------------------------------------

    def _sync(self, pubsub, now: float) -> None:
        needed = self.needed_buckets()
        for bucket in needed:
            self.unneeded_since.pop(bucket, None)
        for bucket in self.requested - needed:
            self.unneeded_since.setdefault(bucket, now)
        drop = {b for b, since in self.unneeded_since.items() if now - since >= BUCKET_LINGER_SECS}
        for bucket in drop:
            del self.unneeded_since[bucket]
        self._unsubscribe(drop)
        add = needed - self.requested
        if add and now >= self.retry_at:
            try:
                self._subscribe(add)
            except redis.RedisError as exc:  # no slot map now (every node silent, a slot unserved)
                log.warning("tick bus: cannot place %d buckets yet (%s); trying again", len(add), exc)
                self.down_feeds.setdefault("slot map", str(exc))
                self.retry_at = now + RETRY_SECS

    def _subscribe(self, buckets: set[int]) -> None:
        if not self.slot_map:
            self.slot_map = self._read_slot_map()
        by_node: dict[str, set[int]] = defaultdict(set)
        nodes = {}
        for bucket in buckets:
            host, port = self._master_of(bucket)
            nodes[f"{host}:{port}"] = (host, port)
            by_node[f"{host}:{port}"].add(bucket)
        for name, node_buckets in by_node.items():
            feed = self.feeds.get(name)
            if feed is None:
                feed = self.feeds[name] = NodeFeed(name, *nodes[name])
            self._guarded(feed, lambda f: f.subscribe(node_buckets))  # noqa: B023  (called at once)
            if name in self.feeds:
                self.requested |= node_buckets
                self.node_of.update(dict.fromkeys(node_buckets, name))

    def _read_slot_map(self) -> list[tuple[int, int, str, int]]:
        """Where each slot lives now, asked of the nodes this client knows, those not just lost
        first, each given NODE_TIMEOUT_SECS (redis-py's own refresh waits out a frozen node's
        full socket timeout, with retries, before it asks the next one). Raises
        redis.ConnectionError when none answers."""
        known = {(node.host, node.port) for node in self.cluster.nodes_manager.nodes_cache.values()}
        known |= {(node.host, node.port) for node in self.cluster.nodes_manager.startup_nodes.values()}
        for host, port in sorted(known, key=lambda node: (f"{node[0]}:{node[1]}" in self.down_feeds, node)):
            try:
                return slot_owners(host, port)
            except redis.RedisError:
                continue
        raise redis.ConnectionError("no node of the tick bus cluster answered CLUSTER SLOTS")

    def _master_of(self, bucket: int) -> tuple[str, int]:
        slot = self.cluster.keyslot(keys.SHARDED_TICK_CHANNELS[bucket])
        for first, last, host, port in self.slot_map:
            if first <= slot <= last:
                return host, port
        self.slot_map = []
        raise redis.exceptions.ClusterDownError(f"no master serves slot {slot} (bucket {bucket})")

    def _unsubscribe(self, buckets: set[int]) -> None:
        by_node: dict[str, set[int]] = defaultdict(set)
        for bucket in buckets:
            if (name := self.node_of.get(bucket)) is not None:
                by_node[name].add(bucket)
        self._forget(buckets)
        for name, node_buckets in by_node.items():
            feed = self.feeds.get(name)
            if feed is None:
                continue
            self._guarded(feed, lambda f: f.unsubscribe(node_buckets))  # noqa: B023
            if name in self.feeds and not feed.requested:
                self._close(feed)  # nothing needed there any more: no connection either

    def _forget(self, buckets: set[int]) -> None:
        self.requested -= buckets
        self.live -= buckets
        for bucket in buckets:
            self.node_of.pop(bucket, None)

    # Losing and regaining a master -------------------------------------------------------

    def _lose(self, feed: NodeFeed, reason: str, detail: str, retry_in: float = RETRY_SECS) -> None:
        log.warning("tick bus: lost %s (%s); subscribing its %d buckets again", feed.name, detail, len(feed.requested))
        self._forget(set(feed.requested))
        self._close(feed)
        self.down_feeds[feed.name] = detail
        self.reconnects += 1
        self.last_failure = f"{feed.name}: {detail}"
        metrics.BUS_LISTENER_RECONNECTS.labels(reason=reason).inc()
        metrics.BUS_LISTENER_UP.set(0)
        self.slot_map, self.dirty = [], True
        self.retry_at = time.monotonic() + retry_in

    def _close(self, feed: NodeFeed) -> None:
        self.feeds.pop(feed.name, None)
        try:
            feed.close()
        except (redis.RedisError, OSError):
            pass  # already gone

    def _feed_up(self, feed: NodeFeed) -> None:
        """A subscribe confirmed: once every needed bucket is live again, the losses are over."""
        feed.liveness.heard()
        if self.down_feeds and self.needed_buckets() <= self.live:
            log.info("tick bus: every needed bucket subscribed again (%s)", ", ".join(sorted(self.feeds)))
            self.down_feeds.clear()
            if self.connected:
                metrics.BUS_LISTENER_UP.set(1)

    def unheard_buckets(self) -> set[int]:
        return self.needed_buckets() - self.live if self.down_feeds else set()

    def report(self) -> dict[str, Any]:
        report = super().report()
        report["masters"] = sorted(self.feeds)
        if report["ok"] and self.down_feeds:
            report["ok"] = False
            report["reason"] = ("the tick listener lost tick bus masters: "
                                + "; ".join(f"{name} ({why})" for name, why in sorted(self.down_feeds.items())))
        return report
