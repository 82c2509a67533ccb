"""The fenced publisher against the real Redis: what subscribers and snapshots receive."""

from __future__ import annotations

import time

import pytest

from ticker.bus import keys
from ticker.bus.epoch import BusEpoch
from ticker.bus.publisher import LeaseLost, TickPublisher
from ticker.bus.ticks import decode, decode_batch, encode

pytestmark = pytest.mark.integration

LEASE = "test:publisher:lease"


SEGMENT = 0x0F  # a segment no exchange uses: a running stack publishing on the same channels has none


def my_snapshots(redis) -> dict[str, str]:
    """This test's snapshots (a running stack keeps its own in the same hash)."""
    return {token: tick for token, tick in redis.hgetall(keys.LAST_TICKS).items() if int(token) & 0xFF == SEGMENT}


def ticks(count: int, start: int = 2000, price: float = 100.0) -> list[dict]:
    return [{"tradable": True, "mode": "quote", "instrument_token": ((start + i) << 8) | SEGMENT,
             "last_price": price + i, "ohlc": {"open": 1.0, "close": 2.0}, "change": -1.1160714285714286}
            for i in range(count)]


@pytest.fixture
def publisher(redis):
    redis.set(LEASE, "mine")
    redis.delete(keys.LAST_TICKS)
    yield TickPublisher(redis, LEASE, "mine")
    redis.delete(LEASE, keys.LAST_TICKS)


def lose_redis_state(redis) -> None:
    """What a Redis restarted empty looks like to a publisher that kept its lease value."""
    redis.delete(keys.EPOCH, keys.LAST_TICKS)


def received(pubsub, batches: int, timeout: float = 5) -> list[dict]:
    got: list[dict] = []
    deadline = time.monotonic() + timeout
    while batches and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.5)
        if message and message["type"] == "message":
            mine = [tick for tick in decode_batch(message["data"]) if tick["instrument_token"] & 0xFF == SEGMENT]
            got += mine
            batches -= bool(mine)
    return got


def test_every_tick_reaches_its_channel_stamped_and_becomes_the_snapshot(redis, publisher):
    pubsub = redis.pubsub()
    pubsub.subscribe(*(keys.tick_channel(b) for b in range(keys.TICK_BUCKETS)))
    first, second = ticks(300), ticks(300, price=500.0)

    assert publisher.publish(first) == 300
    assert publisher.publish(second) == 300
    got = received(pubsub, 2 * keys.TICK_BUCKETS)
    pubsub.close()

    assert len(got) == 600
    by_token: dict[int, list[dict]] = {}
    for tick in got:
        by_token.setdefault(tick["instrument_token"], []).append(tick)
    assert all([t["seq"] for t in seen] == [1, 2] for seen in by_token.values())
    assert all(tick["ingest_ts"] > 0 and tick["ohlc"] == {"open": 1.0, "close": 2.0} for tick in got)
    snapshots = my_snapshots(redis)
    assert len(snapshots) == 300
    for tick in second:
        assert decode(snapshots[str(tick["instrument_token"])]) == tick  # the latest, exactly as sent


def test_a_publisher_that_lost_its_lease_publishes_nothing(redis, publisher):
    publisher.publish(ticks(5))
    before = my_snapshots(redis)
    redis.set(LEASE, "someone-else")
    pubsub = redis.pubsub()
    pubsub.subscribe(*(keys.tick_channel(b) for b in range(keys.TICK_BUCKETS)))

    with pytest.raises(LeaseLost):
        publisher.publish(ticks(5, price=900.0))

    assert received(pubsub, 1, timeout=1) == []
    pubsub.close()
    assert my_snapshots(redis) == before


def test_seq_continues_from_the_snapshots_after_a_restart(redis, publisher):
    publisher.publish(ticks(3))
    publisher.publish(ticks(3))
    successor = TickPublisher(redis, LEASE, "mine")
    tokens = [t["instrument_token"] for t in ticks(3)]
    successor.resume_seqs(tokens)
    batch = ticks(3)
    successor.publish(batch)
    assert [t["seq"] for t in batch] == [3, 3, 3]


def test_a_seq_never_goes_backwards_within_an_epoch_and_a_lost_state_begins_a_new_one(redis, publisher):
    first = ticks(3)
    publisher.publish(first)
    publisher.publish(ticks(3))
    old_epoch = first[0]["epoch"]

    lose_redis_state(redis)
    redis.set(LEASE, "mine")  # (a lease is taken again; what matters here is the epoch)
    after = ticks(3)
    publisher.publish(after)

    assert all(t["seq"] == 1 for t in after)  # the count starts again ...
    assert all(t["epoch"] > old_epoch for t in after)  # ... in a later epoch, which says so
    snapshot = decode(redis.hget(keys.LAST_TICKS, str(after[0]["instrument_token"])))
    assert (snapshot["epoch"], snapshot["seq"]) == (after[0]["epoch"], 1)


def test_a_successor_does_not_continue_a_sequence_of_another_epoch(redis, publisher):
    publisher.publish(ticks(2))
    tokens = [t["instrument_token"] for t in ticks(2)]
    stale = decode(redis.hget(keys.LAST_TICKS, str(tokens[0])))
    redis.delete(keys.EPOCH)  # the epoch is gone, the snapshots (say, restored from a dump) are not
    redis.hset(keys.LAST_TICKS, str(tokens[0]), encode(stale))

    successor = TickPublisher(redis, LEASE, "mine")
    successor.resume_seqs(tokens)
    batch = ticks(2)
    successor.publish(batch)
    assert [t["seq"] for t in batch] == [1, 1] and batch[0]["epoch"] > stale["epoch"]


def test_a_server_with_another_replication_id_begins_a_new_epoch(redis):
    """A replica promoted by a failover (or a server restarted without its data) has a new
    replication ID: whatever state it holds may be older than what clients saw."""
    epoch = BusEpoch(redis)
    first = epoch.current()
    assert epoch.current() == first
    redis.hset(keys.EPOCH, "replid", "the-master-that-died")
    assert epoch.current() > first
