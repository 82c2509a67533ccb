"""Two replicas each admit subscriptions against the same free room upstream, before any
assignment has counted the other's; the real assigner then finds room for only some tokens.
The clients holding the rest are told `capacity_exhausted` and stop holding them.

The replicas run on a Redis database of their own with a pool of one slot of `CAPACITY`
tokens and no shard worker: this test runs the assigner itself, so the race is certain."""

from __future__ import annotations

import time

import pytest
import requests

from tests.conftest import ISOLATED_REDIS_URL
from tests.support.clients import RecordingClient
from tests.support.processes import wait_for
from tests.web.webproc import start_web, tokens_of
from ticker.bus import assignment, keys
from ticker.bus.connection import redis_client
from ticker.bus.demand import merge, read_demand

pytestmark = pytest.mark.integration

CAPACITY = 5
GRACE_SECS = 60


@pytest.fixture(scope="module")
def cluster(registry, processes, service_env, workdir):
    """Redis with a one-slot pool, and two replicas on it; stopped at the end of the module
    (they share the isolated database with later tests)."""
    client = redis_client(ISOLATED_REDIS_URL)
    client.flushdb()
    assignment.set_pool(client, {"k1:0": CAPACITY}, {"k1:0": CAPACITY}, {})
    webs = [start_web(processes, service_env, workdir, f"web-overflow-{n}", REDIS_URL=ISOLATED_REDIS_URL)
            for n in "ab"]
    yield client, webs
    for web in webs:
        web.process.stop()


@pytest.fixture
def connect(make_token):
    clients: list[RecordingClient] = []

    def connect(url: str, user: str) -> RecordingClient:
        clients.append(RecordingClient().connect(url, make_token(user)))
        return clients[-1]

    yield connect
    for client in clients:
        client.close()


def overflow_errors(client: RecordingClient) -> list[dict]:
    return [e for e in client.events["error"] if e["code"] == "capacity_exhausted"]


def pool_health(url: str) -> dict:
    return requests.get(f"{url}/health", timeout=5).json()["checks"]["shards"]["pool"]


def subscribe(client: RecordingClient, tokens: list[int]) -> dict:
    reply = client.call("subscribe", {"tokens": tokens, "mode": "ltp"})
    assert reply["tokens"] == tokens and not reply["rejected"], reply
    return reply


def test_clients_whose_tokens_overflowed_are_told_and_unsubscribed(cluster, connect, database):
    redis, (a, b) = cluster
    tokens = tokens_of(database, "NSE", 2 * 4, skip=400)
    alice, carol, bob = connect(a.url, "ovf-alice"), connect(a.url, "ovf-carol"), connect(b.url, "ovf-bob")
    subscribe(alice, tokens[0::2])  # each replica sees room for all of its own four
    subscribe(carol, [tokens[0], tokens[6]])
    subscribe(bob, tokens[1::2])

    assignment.rebalance(redis, {}, GRACE_SECS)  # what a shard or beat does next: room for five
    placed = tokens[:CAPACITY]
    assert pool_health(a.url) == {"capacity": CAPACITY, "assigned": CAPACITY, "waiting": 0, "overflow": 3}

    for client, lost, total in [(alice, [tokens[6]], 3), (carol, [tokens[6]], 1), (bob, [tokens[5], tokens[7]], 2)]:
        error = wait_for(lambda c=client: overflow_errors(c), 5, "the capacity_exhausted error")[0]
        assert sorted(error["tokens"]) == lost and error["message"], error
        dropped = wait_for(lambda c=client: c.events["unsubscribed"], 2, "unsubscribed")[0]
        assert dropped == {"tokens": error["tokens"], "total": total, "reason": "capacity_exhausted"}
        assert client.call("unsubscribe", {"tokens": lost}) == {"tokens": [], "total": total}  # not held

    assert sorted(merge(read_demand(redis))) == placed  # the replicas no longer want them
    assignment.rebalance(redis, {}, GRACE_SECS)
    assert pool_health(b.url) == {"capacity": CAPACITY, "assigned": CAPACITY, "waiting": 0, "overflow": 0}
    assert all(len(overflow_errors(c)) == 1 for c in (alice, carol, bob))
    assert alice.call("subscribe", {"tokens": [tokens[6]]})["rejected"][0]["code"] == "capacity_exhausted"


def test_room_that_opened_after_an_assignment_is_not_taken_for_overflow(cluster, connect, database):
    redis, (a, _) = cluster
    late = tokens_of(database, "NSE", 1, skip=600)
    assignment.rebalance(redis, {}, GRACE_SECS, force=True)
    redis.sadd(keys.ASSIGNMENT_OVERFLOW, *late)  # as if another replica's client had wanted it then

    grown = {"k1:0": CAPACITY, "k2:0": CAPACITY}  # an account was added
    assignment.set_pool(redis, grown, grown, {})
    dave = connect(a.url, "ovf-dave")
    subscribe(dave, late)  # admitted against the new room, before any assignment counted it
    time.sleep(2.5)  # a few overflow checks, each seeing the older assignment's overflow
    assert not overflow_errors(dave) and dave.call("unsubscribe", {"tokens": []})["total"] == 1

    assignment.rebalance(redis, {}, GRACE_SECS)
    assert redis.hget(keys.ASSIGNED_SLOT, late[0]) and not redis.scard(keys.ASSIGNMENT_OVERFLOW)
    time.sleep(1.5)
    assert not overflow_errors(dave)
