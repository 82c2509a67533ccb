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
    """A replica's demand: reference-counted locally, mirrored to Redis on change.

    The local counts are the truth. Adding fails whole (nothing counted) when Redis cannot take
    it, so a subscribe either counts or is refused; removing always counts locally (a client that
    left is gone whatever Redis says), and a removal Redis missed is repaired by the next
    heartbeat, which rewrites the whole hash."""

    def __init__(self, client: redis.Redis, replica: str):
        self.redis = client
        self.replica = replica
        self.counts: dict[int, Counter[str]] = defaultdict(Counter)
        self.drifted = False  # Redis missed a change: the next heartbeat rewrites the mirror

    def add(self, tokens: list[int], mode: str) -> int:
        """Count `tokens` in `mode`; returns the demand version that includes them. Raises
        redis.RedisError (and counts nothing) if Redis could not record them."""
        for token in tokens:
            self.counts[token][mode] += 1
        try:
            return self._mirror(tokens)
        except redis.RedisError:
            self._uncount(tokens, mode)
            raise

    def remove(self, tokens: list[int], mode: str) -> None:
        self._uncount(tokens, mode)
        try:
            self._mirror(tokens)
        except redis.RedisError:
            self.drifted = True

    def wanted(self) -> dict[int, str]:
        return {token: highest(list(modes)) for token, modes in self.counts.items()}

    def heartbeat(self, client: redis.Redis | None = None) -> None:
        """Keep this replica's demand alive; rewrite it whole if Redis lost it (a restart) or
        missed a change. `client`: the connection to use (a replica's background pool)."""
        client = client or self.redis
        alive = keys.replica_alive(self.replica)
        if not self.drifted and client.set(alive, "1", ex=REPLICA_TTL_SECS, xx=True):
            return
        self.drifted = False
        pipe = client.pipeline()
        pipe.delete(keys.demand_of(self.replica))
        wanted = self.wanted()
        if wanted:
            pipe.hset(keys.demand_of(self.replica), mapping=wanted)
        pipe.sadd(keys.DEMAND_REPLICAS, self.replica)
        pipe.set(alive, "1", ex=REPLICA_TTL_SECS)
        pipe.incr(keys.DEMAND_VERSION)
        try:
            pipe.execute()
        except redis.RedisError:
            self.drifted = True
            raise

    def forget(self) -> None:
        """Withdraw this replica's demand (clean shutdown)."""
        pipe = self.redis.pipeline()
        pipe.delete(keys.demand_of(self.replica), keys.replica_alive(self.replica))
        pipe.srem(keys.DEMAND_REPLICAS, self.replica)
        pipe.incr(keys.DEMAND_VERSION)
        pipe.execute()

    def _uncount(self, tokens: list[int], mode: str) -> None:
        for token in tokens:
            self.counts[token][mode] -= 1
            if self.counts[token][mode] <= 0:
                del self.counts[token][mode]
            if not self.counts[token]:
                del self.counts[token]

    def _mirror(self, tokens: list[int]) -> int:
        pipe = self.redis.pipeline()
        for token in set(tokens):
            modes = self.counts.get(token)
            if modes:
                pipe.hset(keys.demand_of(self.replica), token, highest(list(modes)))
            else:
                pipe.hdel(keys.demand_of(self.replica), token)
        pipe.sadd(keys.DEMAND_REPLICAS, self.replica)
        pipe.incr(keys.DEMAND_VERSION)
        return pipe.execute()[-1]


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
