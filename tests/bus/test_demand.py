"""Replica demand in the real Redis: what shards read is what clients want, and a dead
replica's demand expires."""

from ticker.bus import keys
from ticker.bus.demand import ReplicaDemand, demand_version, merge, read_demand


def test_merge_takes_the_richest_mode_and_the_watchlist():
    assert merge([{1: "ltp", 2: "quote"}, {1: "full"}], {3: "quote", 2: "ltp"}) == {1: "full", 2: "quote", 3: "quote"}


def test_demand_is_reference_counted_and_mirrored(redis):
    demand = ReplicaDemand(redis, "replica-a")
    demand.heartbeat()
    before = demand_version(redis)

    demand.add([11, 12], "ltp")
    demand.add([11], "full")
    assert {11: "full", 12: "ltp"} in read_demand(redis)
    assert demand_version(redis) > before

    demand.remove([11], "full")
    assert {11: "ltp", 12: "ltp"} in read_demand(redis)
    demand.remove([11, 12], "ltp")
    assert {} in read_demand(redis)
    demand.forget()


def test_a_dead_replicas_demand_is_dropped(redis):
    demand = ReplicaDemand(redis, "replica-dead")
    demand.heartbeat()
    demand.add([21], "quote")
    redis.delete(keys.replica_alive("replica-dead"))  # what the TTL does when it stops beating

    assert all(21 not in d for d in read_demand(redis))
    assert not redis.exists(keys.demand_of("replica-dead"))


def test_heartbeat_restores_demand_lost_with_redis(redis):
    demand = ReplicaDemand(redis, "replica-b")
    demand.heartbeat()
    demand.add([31], "full")
    redis.delete(keys.demand_of("replica-b"), keys.replica_alive("replica-b"))  # as after a restart

    demand.heartbeat()
    assert {31: "full"} in read_demand(redis)
    demand.forget()
