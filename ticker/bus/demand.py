"""Subscription demand: which tokens, in which modes, the clients of each web replica want.

Each replica owns one hash (token -> highest mode its clients want) and keeps an `alive` key
fresh; when a replica dies its key expires and shards stop counting its demand. Shards poll
one version counter and re-read the hashes only when it moves.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import redis

from ticker.bus import keys
from ticker.bus.ticks import MODE_RANK, highest

REPLICA_TTL_SECS = 15  # three missed heartbeats (every 5 s) and a replica's demand is gone


def merge(demands: list[dict[int, str]], watchlist: dict[int, str] | None = None) -> dict[int, str]:
    """The desired upstream set: every token anyone wants, in the richest mode wanted."""
    desired: dict[int, str] = dict(watchlist or {})
    for demand in demands:
        for token, mode in demand.items():
            if token not in desired or MODE_RANK[mode] > MODE_RANK[desired[token]]:
                desired[token] = mode
    return desired


class ReplicaDemand:
    """A web replica's demand: reference-counted locally, mirrored to Redis on change."""

    def __init__(self, client: redis.Redis, replica: str):
        self.redis = client
        self.replica = replica
        self.counts: dict[int, Counter[str]] = defaultdict(Counter)

    def add(self, tokens: list[int], mode: str) -> None:
        for token in tokens:
            self.counts[token][mode] += 1
        self._mirror(tokens)

    def remove(self, tokens: list[int], mode: str) -> None:
        for token in tokens:
            self.counts[token][mode] -= 1
            if self.counts[token][mode] <= 0:
                del self.counts[token][mode]
            if not self.counts[token]:
                del self.counts[token]
        self._mirror(tokens)

    def wanted(self) -> dict[int, str]:
        return {token: highest(list(modes)) for token, modes in self.counts.items()}

    def heartbeat(self) -> None:
        """Keep this replica's demand alive; rewrite it whole if Redis lost it (a restart)."""
        alive = keys.replica_alive(self.replica)
        if self.redis.set(alive, "1", ex=REPLICA_TTL_SECS, xx=True):
            return
        pipe = self.redis.pipeline()
        pipe.delete(keys.demand_of(self.replica))
        wanted = self.wanted()
        if wanted:
            pipe.hset(keys.demand_of(self.replica), mapping=wanted)
        pipe.sadd(keys.DEMAND_REPLICAS, self.replica)
        pipe.set(alive, "1", ex=REPLICA_TTL_SECS)
        pipe.incr(keys.DEMAND_VERSION)
        pipe.execute()

    def forget(self) -> None:
        """Withdraw this replica's demand (clean shutdown)."""
        pipe = self.redis.pipeline()
        pipe.delete(keys.demand_of(self.replica), keys.replica_alive(self.replica))
        pipe.srem(keys.DEMAND_REPLICAS, self.replica)
        pipe.incr(keys.DEMAND_VERSION)
        pipe.execute()

    def _mirror(self, tokens: list[int]) -> None:
        pipe = self.redis.pipeline()
        for token in set(tokens):
            modes = self.counts.get(token)
            if modes:
                pipe.hset(keys.demand_of(self.replica), token, highest(list(modes)))
            else:
                pipe.hdel(keys.demand_of(self.replica), token)
        pipe.sadd(keys.DEMAND_REPLICAS, self.replica)
        pipe.incr(keys.DEMAND_VERSION)
        pipe.execute()


def demand_version(client: redis.Redis) -> int:
    return int(client.get(keys.DEMAND_VERSION) or 0)


def read_demand(client: redis.Redis) -> list[dict[int, str]]:
    """Every live replica's demand; a dead replica's leftovers are cleared on the way."""
    demands = []
    for replica in client.smembers(keys.DEMAND_REPLICAS):
        if not client.exists(keys.replica_alive(replica)):
            client.delete(keys.demand_of(replica))
            client.srem(keys.DEMAND_REPLICAS, replica)
            continue
        raw = client.hgetall(keys.demand_of(replica))
        demands.append({int(token): mode for token, mode in raw.items()})
    return demands
