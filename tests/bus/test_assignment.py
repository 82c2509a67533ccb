"""The assignment as it lives in the real Redis: rebalancing from demand and usable slots,
per-slot views for shards, overflow, and admission of new subscriptions."""

import pytest

from tests.conftest import ISOLATED_REDIS_URL
from ticker.bus import assignment, keys
from ticker.bus.connection import redis_client
from ticker.bus.demand import ReplicaDemand


@pytest.fixture
def clean():
    """Not the run's shared database: a running stack's shard supervisor rewrites the usable
    slots there every few seconds. No process uses this one while these tests run."""
    redis = redis_client(ISOLATED_REDIS_URL)
    for key in redis.scan_iter(match=f"{keys.PREFIX}:*"):
        if ":assignment:" in key or ":slot" in key or ":demand:" in key or ":replica:" in key:
            redis.delete(key)
    yield redis


def test_rebalance_writes_each_slots_share_and_the_overflow(clean):
    replica = ReplicaDemand(clean, "assign-test")
    replica.heartbeat()
    assignment.set_pool(clean, {"a:0": 2, "a:1": 2}, {"a:0": 2, "a:1": 2}, {})
    replica.add([1, 2, 3, 4, 5], "quote")

    assert assignment.rebalance(clean, {}, grace_secs=60)
    assert assignment.tokens_of(clean, "a:0") == {1: "quote", 2: "quote"}
    assert assignment.tokens_of(clean, "a:1") == {3: "quote", 4: "quote"}
    assert clean.smembers(keys.ASSIGNMENT_OVERFLOW) == {"5"}
    assert not assignment.rebalance(clean, {}, grace_secs=60)  # nothing moved: no work
    replica.forget()


def test_new_subscriptions_are_admitted_only_while_there_is_room(clean):
    replica = ReplicaDemand(clean, "admit-test")
    replica.heartbeat()
    assignment.set_pool(clean, {"a:0": 3}, {"a:0": 3}, {})
    replica.add([1, 2], "ltp")
    assignment.rebalance(clean, {}, grace_secs=60)

    assert assignment.admissible(clean, [1, 2, 7, 8]) == {1, 2, 7}  # streamed ones, and one free place
    assignment.set_pool(clean, {}, {}, {})
    assert assignment.admissible(clean, [9]) == set()  # no account at all: no room at all
    replica.forget()


def test_while_an_accounts_token_is_expired_its_room_still_admits_and_its_tokens_wait(clean):
    replica = ReplicaDemand(clean, "expired-test")
    replica.heartbeat()
    assignment.set_pool(clean, {"a:0": 3}, {"a:0": 3}, {})
    replica.add([1, 2], "ltp")
    assignment.rebalance(clean, {}, grace_secs=60)

    assignment.drop_slots_of(clean, "a", "token_expired")  # Kite refused the morning's token
    assignment.rebalance(clean, {}, grace_secs=60)
    assert assignment.tokens_of(clean, "a:0") == {}  # nothing streams ...
    assert clean.smembers(keys.ASSIGNMENT_WAITING) == {"1", "2"}  # ... but nothing is exhausted either
    assert not clean.smembers(keys.ASSIGNMENT_OVERFLOW)
    assert assignment.accounts_down(clean) == {"a": "token_expired"}
    assert assignment.admissible(clean, [1, 7, 8]) == {1, 7}  # the room is still there to wait for

    assignment.set_pool(clean, {"a:0": 3}, {"a:0": 3}, {})  # a login brought the account back
    assignment.rebalance(clean, {}, grace_secs=60)
    assert assignment.tokens_of(clean, "a:0") == {1: "ltp", 2: "ltp"}
    assert not clean.smembers(keys.ASSIGNMENT_WAITING)
    replica.forget()
