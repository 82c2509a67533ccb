"""The tick bus on a Redis Cluster (`Config.TICK_BUS_URL`): sharded pub/sub, per-bucket fences.

Each bucket's channel, snapshot hash, epoch and fence share one hash tag (`keys.bucket_tag`),
so they live on the one shard that owns its hash slot and one script can check the fence,
`SPUBLISH` the batch and keep the snapshots, atomically. A flush runs one script per bucket it
touches, pipelined per node (redis-py's ClusterPipeline writes every node's commands, then
reads every reply): one round trip per flush, whatever the number of nodes. Each message is a
line naming the flush and its buckets (`flush_mark`), then the batch, so a web replica, which
`SSUBSCRIBE`s each bucket it needs on the node that owns it (ticker.web.sharded_listener), can
deliver a flush's batches from every master together. A master that does not answer costs
only its buckets' ticks (counted in `unpublished`, their `seq`s skipped) while redis-py's slot
map follows the failover; the shard's feed goes on.

The fence. Leases stay on `REDIS_URL` (ticker.bus.lease): acquiring one is the only way to
become a slot's publisher. A holder copies its lease value to each bucket it publishes to, as
`keys.bucket_lease(bucket, slot)` with a TTL cut from its lease's *local* validity
(`ShardLease.remaining()`), and only after a successful acquisition or renewal; the publish
script accepts a batch only while that copy holds the caller's value. The bucket also keeps
the highest generation ever registered there (`keys.bucket_fence`), and refuses a copy from a
lower one. What this guarantees, per bucket:

- a holder's copy never outlives its own local validity, which ends `SAFETY_MARGIN_SECS` before
  Redis can expire the lease (the same bound the lease watchdog relies on): by the time a new
  holder can acquire the slot, every copy of the previous holder has expired, so the previous
  holder cannot publish anywhere, even before it notices, and even before the new holder
  registered its own copies;
- once a newer generation registered at a bucket, an older holder can neither register nor
  publish there again (a delayed registration, a holder paused past its lease);
- a holder that lost its lease cannot refresh its copies: it copies only within its local
  validity, and renews that only through `REDIS_URL`.

What it assumes, unlike the one-Redis fence (which needs no clock): the holder's and the
cluster's clocks run at rates within the safety margin over a lease TTL, and a registration
reaches the cluster within that margin of being sent. A failover that loses a copy costs a
re-registration (the publisher registers again when told its copy is missing); one that loses
a fence's generation reopens the bucket only to holders whose local validity has not ended,
and there is at most one of those.

Epochs are per bucket (`keys.bucket_epoch`): a failover of one node renews the epoch of its
buckets only, and a token's `seq` counts in its bucket's epoch.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import redis
from redis.cluster import RedisCluster

from ticker.bus import keys
from ticker.bus.epoch import ENSURE_EPOCH
from ticker.bus.lease import ShardLease
from ticker.bus.publisher import EPOCH_CHECK_SECS, SNAPSHOTS_LUA, LeaseLost, TickPublisher
from ticker.bus.ticks import decode, encode_all, pack

log = logging.getLogger(__name__)

# Refresh a bucket's copy of the lease when less than this is left of it: copies are written
# with what is left of the lease (about its TTL less the renew period), so a publishing shard
# refreshes each one every few seconds, inside a flush it makes anyway.
FENCE_REFRESH_SECS = 2.0
MIN_FENCE_MS = 200  # a copy shorter than this is not worth writing: renew the lease first
NODE_RETRY_SECS = 2.0  # a node that did not answer is asked again after this (a failover takes seconds)

# KEYS: the bucket's copy of the lease, its fence hash. ARGV: slot, lease value, generation,
# TTL ms. 1 if registered; 0 if a newer generation registered here before (we lost the lease).
_REGISTER = """
local floor = tonumber(redis.call('hget', KEYS[2], ARGV[1]) or '0')
if floor > tonumber(ARGV[3]) then return 0 end
redis.call('hset', KEYS[2], ARGV[1], ARGV[3])
redis.call('set', KEYS[1], ARGV[2], 'px', ARGV[4])
return 1
"""
# KEYS: the copy of the lease, the snapshot hash, the epoch hash. ARGV: lease value, epoch id,
# channel, batch, the flush's mark (`flush_mark`). -1: the copy is not ours (missing or another
# holder's); -2: the epoch moved. The message is the mark, then the batch.
_SHARDED_PUBLISH = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('hget', KEYS[3], 'id') ~= ARGV[2] then return -2 end
redis.call('spublish', ARGV[3], ARGV[5] .. ARGV[4])
""" + SNAPSHOTS_LUA + "return 1\n"


def flush_mark(flush: str, buckets: Iterable[int]) -> bytes:
    """The line before each batch of a flush on a cluster: which flush it belongs to and which
    buckets it published to (a bit per bucket, in hex), so a replica can wait for the rest of
    it, from every master, and send each client one frame per flush (ticker.web.sharded_listener)."""
    return f"#{flush} {sum(1 << bucket for bucket in buckets):x}\n".encode()


def split_mark(message: bytes) -> tuple[bytes, int, bytes]:
    """(flush id, its buckets as a bit mask, batch) of a message from a cluster tick channel."""
    mark, _, batch = message.partition(b"\n")
    flush, _, buckets = mark[1:].rpartition(b" ")
    return flush, int(buckets, 16), batch


class ShardedTickPublisher(TickPublisher):
    """`TickPublisher` for a cluster tick bus: the same stamping (`seq`, `epoch`, `ingest_ts`)
    and batches, one fenced script per bucket, pipelined per node. Raises LeaseLost when a
    bucket refuses the lease (a newer holder registered there); a node that cannot be reached
    costs the ticks of its buckets (counted in `unpublished`, their `seq`s skipped so clients
    see the gap), not the flush; redis.RedisError only when no bucket could be published."""

    def __init__(self, client: redis.Redis, cluster: RedisCluster, lease: ShardLease):
        self.redis = client
        self.cluster = cluster
        self.lease = lease
        self.lease_value = lease.value or ""
        self.seqs: dict[int, int] = {}
        self.epochs: dict[int, int] = {}  # bucket -> the epoch id last read
        self.unreachable: set[int] = set()  # buckets whose node did not answer the last epoch check
        self.down_until: dict[str, float] = {}  # node -> not asked again before (monotonic)
        self.map_refreshed = float("-inf")
        self.epoch = None
        self.epoch_checked = 0.0
        self.epochs_begun = 0
        self.fenced_until: dict[int, float] = {}  # bucket -> monotonic time our copy there expires
        self.unpublished = 0
        self.flushes = 0
        self.scripts = {name: cluster.register_script(text) for name, text in
                        (("register", _REGISTER), ("publish", _SHARDED_PUBLISH), ("epoch", ENSURE_EPOCH))}

    # Epochs ------------------------------------------------------------------------------

    def _check_epoch(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and self.epochs and now - self.epoch_checked < EPOCH_CHECK_SECS:
            return
        self.epoch_checked = now
        fresh = self._read_epochs()
        for bucket, epoch in fresh.items():
            if epoch is None:  # its node is unreachable now: its ticks wait (and are counted)
                self.unreachable.add(bucket)
                continue
            self.unreachable.discard(bucket)
            before = self.epochs.get(bucket)
            if before is not None and epoch != before:
                self.epochs_begun += 1
                log.warning("bus epoch of bucket %d moved from %s to %s: its tokens' seq starts again",
                            bucket, before, epoch)
            if epoch != before:
                self._forget_seqs(bucket)
            self.epochs[bucket] = epoch

    def _read_epochs(self) -> dict[int, int | None]:
        """Every bucket's epoch, begun anew where its node's replication ID changed (a
        failover); None for buckets whose node cannot be reached now."""
        by_node: dict[str, list[int]] = defaultdict(list)
        nodes = {}
        for bucket in range(keys.TICK_BUCKETS):
            node = self.cluster.get_node_from_key(keys.bucket_epoch(bucket))
            nodes[node.name] = node
            by_node[node.name].append(bucket)
        epochs: dict[int, int | None] = {}
        for _attempt in range(2):  # a second time only if a node lacked the script
            results = self._ensure_epochs(by_node, nodes, epochs)
            if not any(isinstance(r, redis.exceptions.NoScriptError) for r in results.values()):
                break
        for bucket, outcome in results.items():
            epochs[bucket] = None if isinstance(outcome, Exception) else int(outcome)
            if isinstance(outcome, redis.ConnectionError | redis.TimeoutError):
                self._node_failed(self.cluster.get_node_from_key(keys.bucket_epoch(bucket)).name, outcome)
        resting = any(time.monotonic() < until for until in self.down_until.values())
        if all(epoch is None for epoch in epochs.values()) and not resting:  # the whole cluster is gone
            raise redis.ConnectionError("no node of the tick bus cluster answered")
        return epochs

    def _ensure_epochs(self, by_node, nodes, epochs) -> dict[int, Any]:
        pipe: list[tuple[Any, tuple]] = []
        asked = []
        for name, buckets in by_node.items():
            if time.monotonic() < self.down_until.get(name, 0.0):
                epochs.update(dict.fromkeys(buckets))
                continue
            try:  # the epoch script reads the node's replication ID itself; this asks whether it answers
                self.cluster.get_redis_connection(nodes[name]).ping()
            except redis.RedisError as exc:
                self._node_failed(name, exc)
                epochs.update(dict.fromkeys(buckets))
                continue
            for bucket in buckets:
                self._queue(pipe, "epoch", [keys.bucket_epoch(bucket)], [])
                asked.append(bucket)
        return dict(zip(asked, self._execute(pipe), strict=True))

    def _node_failed(self, name: str, exc: Exception) -> None:
        """A node did not answer: leave it alone for NODE_RETRY_SECS (each try may cost a socket
        timeout), and ask the cluster where its slots live now (a failover moves them)."""
        log.warning("tick bus node %s unreachable (%s): its buckets wait", name, exc)
        now = time.monotonic()
        self.down_until[name] = now + NODE_RETRY_SECS
        self.epoch_checked = 0.0
        if now - self.map_refreshed >= NODE_RETRY_SECS:
            self.map_refreshed = now
            try:
                self.cluster.nodes_manager.initialize()
            except (redis.RedisError, redis.exceptions.RedisClusterException) as refresh_error:
                log.warning("tick bus: cannot refresh the slot map: %s", refresh_error)

    def _forget_seqs(self, bucket: int) -> None:
        bucket_of = keys.bucket_of
        for token in [t for t in self.seqs if bucket_of(t) == bucket]:
            del self.seqs[token]

    def resume_seqs(self, tokens: list[int]) -> None:
        """As `TickPublisher.resume_seqs`, reading each bucket's snapshots on its node."""
        self._check_epoch()
        missing = [t for t in tokens if t not in self.seqs]
        for token, raw in zip(missing, read_snapshots(self.cluster, missing), strict=True):
            snapshot = decode(raw) if raw else None
            epoch = self.epochs.get(keys.bucket_of(token))
            self.seqs[token] = snapshot["seq"] if snapshot and snapshot.get("epoch") == epoch else 0

    # Publishing --------------------------------------------------------------------------

    def publish(self, ticks: list[dict[str, Any]]) -> int:
        if not ticks:
            return 0
        self._check_epoch()
        by_bucket: dict[int, list[dict]] = defaultdict(list)
        bucket_of = keys.bucket_of
        for tick in ticks:
            by_bucket[bucket_of(tick["instrument_token"])].append(tick)
        unpublished = self.unpublished
        retry = self._publish_buckets(by_bucket)
        if retry:  # a copy missing (expired, lost in a failover) or an epoch that moved: once more
            self._check_epoch(force=True)
            for bucket in retry:
                self.fenced_until.pop(bucket, None)
            retry = self._publish_buckets({bucket: by_bucket[bucket] for bucket in retry})
            if retry:
                raise redis.ResponseError(f"buckets {sorted(retry)} refused the same flush twice")
        return len(ticks) - (self.unpublished - unpublished)

    def _publish_buckets(self, by_bucket: dict[int, list[dict]]) -> list[int]:
        """One pipelined round: register copies that are due, publish every bucket. Returns the
        buckets to try again; raises LeaseLost or (nothing published at all) RedisError."""
        now_ms, now = int(time.time() * 1000), time.monotonic()
        pipe: list[tuple[Any, tuple]] = []
        plan: list[tuple[str, int]] = []
        ttls: dict[int, int] = {}
        reachable = {}
        for bucket, ticks in by_bucket.items():
            if self.epochs.get(bucket) is None or bucket in self.unreachable:  # lost, and counted
                self.unpublished += len(ticks)
            else:
                reachable[bucket] = ticks
        self.flushes += 1
        mark = flush_mark(f"{self.lease.slot}.{self.lease.generation}.{self.flushes}", reachable)
        for bucket, ticks in reachable.items():
            epoch = self.epochs[bucket]
            if self.fenced_until.get(bucket, 0.0) - now < FENCE_REFRESH_SECS:
                plan.append(("register", bucket))
                ttls[bucket] = self._register(bucket, pipe)
            plan.append(("publish", bucket))
            self._stamp(ticks, epoch, now_ms)
            self._queue(pipe, "publish", [self.lease_key(bucket), keys.bucket_last(bucket), keys.bucket_epoch(bucket)],
                        [self.lease_value, epoch, keys.SHARDED_TICK_CHANNELS[bucket], pack(ticks, encode_all(ticks)),
                         mark])
        if not plan:
            return []
        return self._outcomes(plan, self._execute(pipe), by_bucket, now, ttls)

    def _outcomes(self, plan, results, by_bucket, started: float, ttls: dict[int, int]) -> list[int]:
        retry, failures = [], []
        for (kind, bucket), outcome in zip(plan, results, strict=True):
            if kind == "register" and isinstance(outcome, Exception):
                continue  # the publish behind it on the same node fails too, or finds no copy
            if kind == "register":
                if outcome == 0:
                    raise LeaseLost(f"lease lost: a newer holder of this slot registered at bucket {bucket}")
                self.fenced_until[bucket] = started + ttls[bucket] / 1000
            elif outcome in (-1, -2) or isinstance(outcome, redis.exceptions.NoScriptError):
                for tick in by_bucket[bucket]:  # not published: the next attempt counts them again
                    self.seqs[tick["instrument_token"]] -= 1
                retry.append(bucket)
            elif isinstance(outcome, Exception):  # it may have run: its seqs stay used, clients see a gap
                failures.append(outcome)
                self.unpublished += len(by_bucket[bucket])
                self.unreachable.add(bucket)  # until an epoch check finds its node (a failover renews some)
                self._node_failed(self.cluster.get_node_from_key(keys.bucket_epoch(bucket)).name, outcome)
        if failures and len(failures) == len(by_bucket):
            raise failures[0]
        if failures:
            log.warning("tick bus: %d of %d buckets not published (%s)", len(failures), len(by_bucket), failures[0])
        return retry

    def lease_key(self, bucket: int) -> str:
        return keys.bucket_lease(bucket, self.lease.slot)

    def _register(self, bucket: int, pipe) -> int:
        """Queue the registration of our copy of the lease at `bucket`; returns its TTL (ms)."""
        ttl_ms = int(self.lease.remaining() * 1000)
        if ttl_ms < MIN_FENCE_MS:  # the shard's own renewal is late: renew now, through REDIS_URL
            if not self.lease.renew():
                raise LeaseLost("lease lost to another owner")
            ttl_ms = int(self.lease.remaining() * 1000)
        self._queue(pipe, "register", [self.lease_key(bucket), keys.bucket_fence(bucket)],
                    [self.lease.slot, self.lease_value, self.lease.generation or 0, ttl_ms])
        return ttl_ms

    def _stamp(self, ticks: list[dict], epoch: int, now_ms: int) -> None:
        seqs = self.seqs
        for tick in ticks:
            token = tick["instrument_token"]
            seqs[token] = tick["seq"] = seqs.get(token, 0) + 1
            tick["epoch"] = epoch
            tick["ingest_ts"] = now_ms

    def _queue(self, commands: list, script: str, script_keys: list[str], args: list[Any]) -> None:
        """Add a script call, with the node that owns its keys, to `commands` (see `_execute`)."""
        node = self.cluster.get_node_from_key(script_keys[0])
        commands.append((node, ("EVALSHA", self.scripts[script].sha, len(script_keys), *script_keys, *args)))

    def _execute(self, commands: list[tuple[Any, tuple]]) -> list[Any]:
        """Run the commands in one ClusterPipeline: each one's reply or exception, in order.

        Each is addressed to its node from the slot map: redis-py 8.1's ClusterPipeline blocks
        `evalsha()` and Script objects (redis/redis-py#2914) and routes a bare EVALSHA by asking
        a node COMMAND GETKEYS, a round trip per command (and a hang on a frozen node); a MOVED
        or ASK reply still sends it where the cluster says, by its keys. When the pipeline fails
        as a whole (a node refused the connection), each node's commands are sent again on
        their own, so one lost master costs only its own (a script that did run is published
        twice: its `seq`s repeat, and receivers drop a repeat). Where a node lacked our scripts
        (restarted, or a replica just promoted) they are loaded on every primary; NOSCRIPT
        means the script did not run, and the caller tries it again."""
        if not commands:
            return []
        try:
            results = self._pipeline(commands)
        except (redis.RedisError, redis.exceptions.RedisClusterException):
            results = self._per_node(commands)
        if any(isinstance(r, redis.exceptions.NoScriptError) for r in results):
            try:
                for script in self.scripts.values():
                    self.cluster.script_load(script.script)
            except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
                log.warning("tick bus: could not load the scripts on every master: %s", exc)
        return results

    def _pipeline(self, commands: list[tuple[Any, tuple]]) -> list[Any]:
        pipe = self.cluster.pipeline(transaction=False)
        for node, args in commands:
            pipe.execute_command(*args, target_nodes=node)
        return pipe.execute(raise_on_error=False)

    def _per_node(self, commands: list[tuple[Any, tuple]]) -> list[Any]:
        by_node: dict[str, list[int]] = defaultdict(list)
        for i, (node, _) in enumerate(commands):
            by_node[node.name].append(i)
        results: list[Any] = [None] * len(commands)
        for indexes in by_node.values():
            try:
                outcomes = self._pipeline([commands[i] for i in indexes])
            except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
                failure = exc if isinstance(exc, redis.RedisError) else redis.ConnectionError(str(exc))
                outcomes = [failure] * len(indexes)
            for i, outcome in zip(indexes, outcomes, strict=True):
                results[i] = outcome
        return results


def read_snapshots(cluster: RedisCluster, tokens: list[int]) -> list[str | None]:
    """The last tick (encoded) of each token, in order, None where there is none: one HMGET per
    bucket, pipelined per node. Raises redis.RedisError when a node cannot be reached."""
    by_bucket: dict[int, list[int]] = defaultdict(list)
    for token in tokens:
        by_bucket[keys.bucket_of(token)].append(token)
    pipe = cluster.pipeline(transaction=False)
    for bucket, bucket_tokens in by_bucket.items():
        pipe.hmget(keys.bucket_last(bucket), bucket_tokens)
    found: dict[int, str | None] = {}
    for bucket_tokens, raws in zip(by_bucket.values(), pipe.execute(), strict=True):
        found.update(zip(bucket_tokens, raws, strict=True))
    return [found[token] for token in tokens]


def tick_publisher(client: redis.Redis, lease: ShardLease, tick_bus_url: str) -> TickPublisher:
    """The publisher for a shard holding `lease`: on `client` (REDIS_URL) when `tick_bus_url`
    is empty, else on the cluster it names."""
    if not tick_bus_url:
        return TickPublisher(client, keys.shard_lease(lease.slot), lease.value or "")
    from ticker.bus.connection import tick_bus_client

    return ShardedTickPublisher(client, tick_bus_client(tick_bus_url), lease)
