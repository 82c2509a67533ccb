"""The tick bus on a real Redis Cluster: sharded publish and subscribe, per-bucket snapshots,
and the fence that keeps a shard which lost its lease from publishing."""

from __future__ import annotations

import time
from collections import defaultdict

import pytest
import redis as redis_lib

from ticker.bus import keys, lease
from ticker.bus.connection import cluster_seeds, tick_bus_client
from ticker.bus.lease import ShardLease
from ticker.bus.publisher import LeaseLost
from ticker.bus.sharded import ShardedTickPublisher, read_snapshots, split_mark
from ticker.bus.ticks import decode, decode_batch

pytestmark = pytest.mark.integration

SEGMENT = 0x0E  # a segment no exchange uses: nothing else publishes these tokens


def token_in(bucket: int, n: int = 0) -> int:
    return ((bucket + keys.TICK_BUCKETS * (1000 + n)) << 8) | SEGMENT


def ticks_for(tokens: list[int], price: float = 100.0) -> list[dict]:
    return [{"tradable": True, "mode": "ltp", "instrument_token": token, "last_price": price} for token in tokens]


def buckets_by_master(cluster) -> dict[str, list[int]]:
    by_node = defaultdict(list)
    for bucket in range(keys.TICK_BUCKETS):
        by_node[cluster.get_node_from_key(keys.bucket_tag(bucket)).name].append(bucket)
    return by_node


def subscriber(cluster, bucket: int) -> redis_lib.client.PubSub:
    """A plain connection to the bucket's master, SSUBSCRIBEd to its channel."""
    node = cluster.get_node_from_key(keys.bucket_tag(bucket))
    pubsub = redis_lib.Redis(host=node.host, port=node.port).pubsub()
    pubsub.ssubscribe(keys.SHARDED_TICK_CHANNELS[bucket])
    assert pubsub.get_message(timeout=2)["type"] == "ssubscribe"
    return pubsub


def batches(pubsub, timeout: float = 1.0) -> list[list[dict]]:
    got, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.2)
        if message and message["type"] == "smessage":
            got.append(decode_batch(split_mark(message["data"])[2]))
    return got


@pytest.fixture
def cluster(redis_cluster):
    return tick_bus_client(redis_cluster.url)


@pytest.fixture
def short_leases(monkeypatch):
    """Leases of 1.5 s (0.5 s margin): a holder paused past its lease in a test's time."""
    monkeypatch.setattr(lease, "LEASE_TTL_MS", 1500)
    monkeypatch.setattr(lease, "LEASE_TTL_SECS", 1.5)
    monkeypatch.setattr(lease, "SAFETY_MARGIN_SECS", 0.5)


def holder(redis, cluster, slot: str, owner: str) -> ShardedTickPublisher:
    shard_lease = ShardLease(redis, slot, owner)
    assert shard_lease.acquire()
    return ShardedTickPublisher(redis, cluster, shard_lease)


def test_cluster_urls_name_every_seed():
    assert cluster_seeds("redis+cluster://10.0.0.1:7000,10.0.0.2:7001") == [("10.0.0.1", 7000), ("10.0.0.2", 7001)]
    for wrong in ("redis://10.0.0.1:7000", "redis+cluster://10.0.0.1", "redis+cluster://:7000"):
        with pytest.raises(ValueError):
            cluster_seeds(wrong)


def test_each_master_carries_its_buckets_ticks_and_snapshots(redis, cluster):
    by_master = buckets_by_master(cluster)
    assert len(by_master) == 3  # the 64 buckets spread over every master
    chosen = [buckets[0] for buckets in by_master.values()]
    listeners = {bucket: subscriber(cluster, bucket) for bucket in chosen}
    publisher = holder(redis, cluster, "test-sharded:0", "a")
    tokens = [token_in(bucket) for bucket in chosen]

    assert publisher.publish(ticks_for(tokens)) == len(tokens)

    for bucket, pubsub in listeners.items():
        (batch,) = batches(pubsub)
        assert [tick["instrument_token"] for tick in batch] == [token_in(bucket)]
        assert batch[0]["seq"] == 1 and batch[0]["epoch"] == publisher.epochs[bucket]
    snapshots = read_snapshots(cluster, [*tokens, token_in(chosen[0], 1)])
    assert [decode(raw)["instrument_token"] for raw in snapshots[:-1]] == tokens
    assert snapshots[-1] is None
    publisher.lease.release()


def test_a_successor_resumes_each_tokens_seq_from_its_buckets_snapshot(redis, cluster):
    token = token_in(5, 2)
    first = holder(redis, cluster, "test-sharded:1", "a")
    first.publish(ticks_for([token]))
    first.publish(ticks_for([token]))
    first.lease.release()
    successor = holder(redis, cluster, "test-sharded:1", "b")
    successor.resume_seqs([token])
    pubsub = subscriber(cluster, 5)
    successor.publish(ticks_for([token]))
    assert [tick["seq"] for batch in batches(pubsub) for tick in batch] == [3]
    successor.lease.release()


def test_a_holder_paused_past_its_lease_cannot_publish_after_a_successor_registered(
        redis, cluster, short_leases):
    slot, (bucket, other) = "test-sharded:2", (7, 9)
    stale = holder(redis, cluster, slot, "paused")
    stale.publish(ticks_for([token_in(bucket), token_in(other)]))
    time.sleep(1.6)  # paused: the lease expired in Redis, and the copies with it
    fresh = holder(redis, cluster, slot, "successor")
    assert fresh.lease.generation > stale.lease.generation
    fresh.publish(ticks_for([token_in(bucket)]))
    listeners = {b: subscriber(cluster, b) for b in (bucket, other)}

    with pytest.raises(LeaseLost):  # where the successor registered, the fence refuses it
        stale.publish(ticks_for([token_in(bucket)], price=1.0))
    with pytest.raises(LeaseLost):  # where it did not, the stale copy has expired and cannot be renewed
        stale.publish(ticks_for([token_in(other)], price=1.0))
    fresh.publish(ticks_for([token_in(bucket)], price=2.0))

    assert [[t["last_price"] for t in batch] for batch in batches(listeners[bucket])] == [[2.0]]
    assert batches(listeners[other], timeout=0.3) == []
    assert decode(read_snapshots(cluster, [token_in(bucket)])[0])["last_price"] == 2.0


def test_a_stale_copy_of_the_lease_is_refused_by_the_fence(redis, cluster, short_leases):
    """A registration that arrives late (sent before a successor's) cannot take the bucket back."""
    slot, bucket = "test-sharded:3", 11
    stale = holder(redis, cluster, slot, "late")
    time.sleep(1.6)
    fresh = holder(redis, cluster, slot, "successor")
    fresh.publish(ticks_for([token_in(bucket)]))
    register = stale.scripts["register"]
    assert register(keys=[stale.lease_key(bucket), keys.bucket_fence(bucket)],
                    args=[slot, stale.lease_value, stale.lease.generation, 5000]) == 0
    assert cluster.get(fresh.lease_key(bucket)) == fresh.lease_value


def test_the_bucket_itself_refuses_a_holder_whose_copy_was_replaced(redis, cluster):
    """The holder still believes its copy current (registered a moment ago, so it does not
    register again): the publish script alone must refuse it once a successor registered."""
    slot, bucket = "test-sharded:4", 13
    stale = holder(redis, cluster, slot, "taken-over")
    stale.publish(ticks_for([token_in(bucket)]))
    redis.delete(keys.shard_lease(slot))  # the slot changes hands (as after an expiry)
    fresh = holder(redis, cluster, slot, "successor")
    fresh.publish(ticks_for([token_in(bucket)]))
    pubsub = subscriber(cluster, bucket)

    with pytest.raises(LeaseLost):
        stale.publish(ticks_for([token_in(bucket)], price=1.0))

    assert batches(pubsub, timeout=0.5) == []  # nothing of the stale holder's reached anyone
    assert decode(read_snapshots(cluster, [token_in(bucket)])[0])["last_price"] == 100.0
