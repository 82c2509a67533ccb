"""The tick listener for a tick bus on a Redis Cluster (`Config.TICK_BUS_URL`).

Each bucket's channel lives on the master that owns its hash slot (ticker.bus.sharded). The
listener holds one connection per master that owns a bucket its clients need, and
`SSUBSCRIBE`s the buckets there; masters owning nothing it needs get no connection. Control
notices (registry reloads, the replica's own wake-up) stay on `REDIS_URL`, on the connection
`TickListener` keeps for them. One loop waits on every connection at once (`select`, which
gevent and eventlet make cooperative) and reads batches raw, as `TickListener` does.

Each master's connection is watched on its own (`ticker.bus.liveness`): a PING after a second
of quiet, given up after `SILENT_SECS` without a word. A connection that fails (an error, a
refused connect, silence, a MOVED reply to a subscribe) or that the server unsubscribes (its
slot moved to another node: Redis sends `sunsubscribe`) costs only its own buckets: the
listener refreshes the cluster's slot map and subscribes them again where they live now,
retrying every `RETRY_SECS` while a failover is under way. Each loss is counted
(`ticker_bus_listener_reconnects_total`, reason `silent`, `error`, `moved`), and /health reports
the listener down until every needed bucket is subscribed again.
"""

from __future__ import annotations

import logging
import select
import time
from collections import defaultdict
from typing import Any

import redis
from redis.cluster import RedisCluster

from ticker import metrics
from ticker.bus import keys
from ticker.bus.connection import connection_options
from ticker.bus.liveness import ConnectionSilent, Liveness
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


class NodeFeed:
    """One connection to one cluster master and the buckets SSUBSCRIBEd on it."""

    def __init__(self, name: str, host: str, port: int):
        self.name = name
        options = {**connection_options(), "health_check_interval": 0}  # liveness is ours to check
        self.client = redis.Redis(host=host, port=port, **options)
        self.pubsub = self.client.pubsub()
        self.liveness = Liveness()
        self.requested: set[int] = set()

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
        self.slot_map_stale = False
        self.retry_at = 0.0  # a master was lost: connect again no sooner than this
        self.down_feeds: dict[str, str] = {}  # master -> why its buckets are not subscribed now

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
        self.slot_map_stale = True
        super()._restart(reason, detail)

    def _listen(self, pubsub) -> None:
        self.liveness.reset()
        pubsub.subscribe(self.wake_channel, keys.REGISTRY_RELOADED)
        next_sync = 0.0
        while True:
            now = time.monotonic()
            if self.dirty or now >= next_sync:
                self.dirty = False
                next_sync = now + 1.0
                self._sync(pubsub, now)
            pending = self.flush()
            for source in self._readable(pubsub, RETRY_FLUSH_SECS if pending else POLL_SECS):
                if source is pubsub:
                    message = pubsub.get_message(timeout=READ_SECS)
                    self.liveness.heard()
                    if message is not None:
                        self._drain(pubsub, message)
                else:
                    self._guarded(source, self._read_feed)
            self.flush()
            self._check_alive(pubsub)
            for feed in list(self.feeds.values()):
                self._guarded(feed, self._check_feed)
            self.sleep(0)

    def _readable(self, pubsub, wait: float) -> list[Any]:
        """The sources (the control PubSub, feeds) with something to read, waiting at most
        `wait` for one. A feed whose connection fails here is given up."""
        sources = [(pubsub, pubsub.connection), *((f, f.pubsub.connection) for f in self.feeds.values())]
        ready, sockets = [], {}
        for source, connection in sources:
            try:
                if connection.can_read(timeout=0):
                    ready.append(source)
                elif connection._sock is not None:
                    sockets[connection._sock] = source
            except redis.RedisError:
                if source is pubsub:
                    raise
                self._lose(source, "error", "connection failed")
        if ready or not sockets:
            return ready
        readable, _, _ = select.select(list(sockets), [], [], wait)
        return [sockets[sock] for sock in readable if sockets[sock] is pubsub or sockets[sock].name in self.feeds]

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
        while count < MAX_BATCHES_PER_FLUSH and connection.can_read(timeout=0):
            response = connection.read_response(timeout=READ_SECS, disconnect_on_error=False, push_request=True)
            feed.liveness.heard()
            bucket = self.buckets.get(response[1]) if response[0] == b"smessage" else None
            if bucket is not None:
                count += self._deliver(response[2])
                continue
            message = feed.pubsub.handle_message(response)
            if message is not None:
                self._on_feed_message(feed, message)

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
            self.slot_map_stale = self.dirty = True

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
            self._subscribe(add)

    def _subscribe(self, buckets: set[int]) -> None:
        if self.slot_map_stale:
            self.cluster.nodes_manager.initialize()  # where each slot lives after a failover
            self.slot_map_stale = False
        by_node: dict[str, set[int]] = defaultdict(set)
        nodes = {}
        for bucket in buckets:
            node = self.cluster.get_node_from_key(keys.SHARDED_TICK_CHANNELS[bucket])
            nodes[node.name] = node
            by_node[node.name].add(bucket)
        for name, node_buckets in by_node.items():
            feed = self.feeds.get(name)
            if feed is None:
                feed = self.feeds[name] = NodeFeed(name, nodes[name].host, nodes[name].port)
            self._guarded(feed, lambda f: f.subscribe(node_buckets))  # noqa: B023  (called at once)
            if name in self.feeds:
                self.requested |= node_buckets
                self.node_of.update(dict.fromkeys(node_buckets, name))

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
        self.slot_map_stale = self.dirty = True
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

    def report(self) -> dict[str, Any]:
        report = super().report()
        report["masters"] = sorted(self.feeds)
        if report["ok"] and self.down_feeds:
            report["ok"] = False
            report["reason"] = ("the tick listener lost tick bus masters: "
                                + "; ".join(f"{name} ({why})" for name, why in sorted(self.down_feeds.items())))
        return report
