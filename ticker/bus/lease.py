"""Shard leases: at most one worker owns an upstream connection slot at a time.

The lease value carries a generation number drawn from a counter that only grows (the
fencing token): a worker that was paused past its lease finds a different value on renewal
and must stop publishing and close its connection.

Two things make "only grows" and "at most one" hold when Redis itself fails:

- The holder knows locally until when the lease is surely its own: `valid_until`, on the
  monotonic clock, is the start of the last successful renewal (or acquisition) plus the TTL
  less `SAFETY_MARGIN_SECS`. Redis ran the PEXPIRE after that start, so the key lives at least
  that long; the margin covers a watchdog's reaction time and clock-rate drift. A holder that
  cannot reach Redis (a slow call, a restart, a partition) therefore knows when to drop its
  upstream connection without asking anyone (ticker.feed.watchdog does it).
- Redis keeps, beside the counters, the time since which it holds the lease history
  (`keys.SHARD_HISTORY_SINCE`, set by the first acquisition after a loss) and the replication
  ID of the server it began on (`keys.SHARD_HISTORY_REPLID`). A server with another replication
  ID is a replica promoted by a failover (or a server restarted from an old dump): asynchronous
  replication may have cost it the latest acquisitions and renewals, so a new history begins
  there just as after a loss.
- When a slot's generation counter is missing (Redis restarted empty, was flushed, or the slot
  was never leased) or older than the history (it comes from before a failover), it is seeded
  from Redis `TIME` in milliseconds, which exceeds every generation drawn before as long as a
  slot is not leased more than once a millisecond (a lease lives for seconds), so fencing
  tokens never go backwards.
- A previous holder may then still hold a connection it believes leased, until its own
  `valid_until`: at most one TTL after Redis lost the key (or after the failover). A lease
  whose counter had to be seeded is good for upstream connections only once the history is one
  TTL old (`connect_after`; the shard waits for it, ticker.feed.shard): at most one TTL on a
  fresh start or after Redis lost its data or failed over, nothing for a slot first used later.
  A holder whose lease survived a failover renews it on the new master and streams on.
"""

from __future__ import annotations

import time

import redis

from ticker.bus import keys
from ticker.bus.epoch import REPLID_LUA

LEASE_TTL_MS = 6_000  # a killed owner's slot is free again within this
LEASE_TTL_SECS = LEASE_TTL_MS / 1000
RENEW_EVERY_SECS = 2.0  # well inside the TTL, so a healthy owner never loses its lease
# Taken off the TTL for the holder's own view of its lease: the watchdog's poll (0.1 s), a
# close reaching Kite, and clock-rate drift between this host and Redis over one TTL all fit.
SAFETY_MARGIN_SECS = 1.0

# Acquire atomically: the slot's lease if free, with the next generation. The history begins
# anew when it is missing or was begun on another server (a failover). A counter missing or
# older than the history is seeded from the server's clock in ms; then the reply says how long
# (ms) a previous holder may still believe itself the owner: until one TTL after this Redis
# began its lease history. (A history recorded before its server was, as by earlier versions,
# is adopted, not begun anew.)
_ACQUIRE = """
if redis.call('exists', KEYS[1]) == 1 then return false end
local replid = REPLID_LUA
local time = redis.call('time')
local now = time[1] .. string.format('%03d', math.floor(tonumber(time[2]) / 1000))
local since = redis.call('get', KEYS[3])
local began_on = redis.call('get', KEYS[4])
if not since or (began_on and began_on ~= replid) then
  since = now
  redis.call('set', KEYS[3], now)
end
if began_on ~= replid then redis.call('set', KEYS[4], replid) end
local wait_ms = 0
local counter = tonumber(redis.call('get', KEYS[2]))
if not counter or counter < tonumber(since) then
  wait_ms = math.max(0, tonumber(since) + tonumber(ARGV[2]) - tonumber(now))
  redis.call('set', KEYS[2], now)
end
local generation = redis.call('incr', KEYS[2])
redis.call('set', KEYS[1], ARGV[1] .. ':' .. generation, 'px', ARGV[2])
return {generation, wait_ms}
""".replace("REPLID_LUA", REPLID_LUA)
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
    """The lease on one slot, held by `owner` (a worker and task id).

    `valid_until` (monotonic seconds) is how long the lease is surely ours, as far as this
    process can tell without asking Redis; `remaining()` is what is left of it. Redis errors
    propagate from every call; they leave `valid_until` as it was.
    """

    def __init__(self, client: redis.Redis, slot: str, owner: str):
        self.redis = client
        self.slot = slot
        self.owner = owner
        self.value: str | None = None
        self.valid_until = 0.0
        self.connect_after = 0.0  # monotonic: no upstream connection before (see the module doc)
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    @property
    def generation(self) -> int | None:
        return int(self.value.rsplit(":", 1)[1]) if self.value else None

    def remaining(self) -> float:
        """Seconds the lease is surely still ours (0 when it may not be)."""
        return max(0.0, self.valid_until - time.monotonic())

    def acquire(self) -> bool:
        """Take the slot's lease if nobody holds it; True if taken."""
        started = time.monotonic()
        slot_keys = [keys.shard_lease(self.slot), keys.shard_generation(self.slot), keys.SHARD_HISTORY_SINCE,
                     keys.SHARD_HISTORY_REPLID]
        taken = self._acquire(keys=slot_keys, args=[self.owner, LEASE_TTL_MS])
        if not taken:
            return False
        generation, wait_ms = taken
        self.value = f"{self.owner}:{generation}"
        self.connect_after = started + wait_ms / 1000
        self._valid_from(started)
        return True

    def renew(self) -> bool:
        """True while the lease is still ours (and good for another TTL from the call's
        start); False means it is gone: stop streaming at once."""
        if self.value is None:
            return False
        started = time.monotonic()
        if self._renew(keys=[keys.shard_lease(self.slot)], args=[self.value, LEASE_TTL_MS]):
            self._valid_from(started)
            return True
        self.value = None
        self.valid_until = 0.0
        return False

    def release(self) -> None:
        if self.value is not None:
            self.valid_until = 0.0
            self._release(keys=[keys.shard_lease(self.slot)], args=[self.value])
            self.value = None

    def _valid_from(self, started: float) -> None:
        self.valid_until = started + LEASE_TTL_SECS - SAFETY_MARGIN_SECS


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
