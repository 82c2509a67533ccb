"""Shard leases: at most one worker owns an upstream connection slot at a time.

The lease value carries a generation number drawn from a counter that only grows (the
fencing token): a worker that was paused past its lease finds a different value on renewal
and must stop publishing and close its connection.
"""

from __future__ import annotations

import redis

from ticker.bus import keys

LEASE_TTL_MS = 6_000  # a killed owner's slot is free again within this
RENEW_EVERY_SECS = 2.0  # well inside the TTL, so a healthy owner never loses its lease

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class ShardLease:
    """The lease on one slot, held by `owner` (a worker and task id)."""

    def __init__(self, client: redis.Redis, slot: str, owner: str):
        self.redis = client
        self.slot = slot
        self.owner = owner
        self.value: str | None = None
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    @property
    def generation(self) -> int | None:
        return int(self.value.rsplit(":", 1)[1]) if self.value else None

    def acquire(self) -> bool:
        if self.redis.exists(keys.shard_lease(self.slot)):
            return False
        generation = self.redis.incr(keys.shard_generation(self.slot))
        value = f"{self.owner}:{generation}"
        if self.redis.set(keys.shard_lease(self.slot), value, nx=True, px=LEASE_TTL_MS):
            self.value = value
            return True
        return False

    def renew(self) -> bool:
        """True while the lease is still ours; False means stop streaming at once."""
        if self.value is None:
            return False
        if self._renew(keys=[keys.shard_lease(self.slot)], args=[self.value, LEASE_TTL_MS]):
            return True
        self.value = None
        return False

    def release(self) -> None:
        if self.value is not None:
            self._release(keys=[keys.shard_lease(self.slot)], args=[self.value])
            self.value = None


def lease_owner(client: redis.Redis, slot: str) -> str | None:
    return client.get(keys.shard_lease(slot))


SHARD_STALE_SECS = 3  # a shard reports every second: three missed reports and it counts as gone


def shard_states(client: redis.Redis) -> dict[str, dict[str, str]]:
    """slot -> the state hash its shard refreshes every second (see ticker.feed.shard)."""
    prefix, suffix = keys.shard_state("\0").split("\0")
    return {
        key.removeprefix(prefix).removesuffix(suffix): client.hgetall(key)
        for key in client.scan_iter(match=keys.shard_state("*"), count=1000)
    }


def shard_live(state: dict[str, str], now: float) -> bool:
    """Streaming, and reported within SHARD_STALE_SECS."""
    return state.get("state") == "streaming" and now - float(state.get("heartbeat") or 0) < SHARD_STALE_SECS
