"""Connection and message limits: a token bucket per connection for its messages, a one-second
window per client address for connection attempts (with the address taken from behind trusted
proxies), all pure logic; and `UserConnections`, the count of each user's connections across
every replica, which lives in Redis.

The cluster-wide count is kept per replica: a hash user -> connections that the replica's
heartbeat keeps alive, so a replica that dies stops counting within `REPLICA_TTL_SECS` without
anyone cleaning up after it. Admission sums the user's field over the live replicas' hashes and
adds the connection in one Lua script, so two replicas admitting the same user at once cannot
both take the last place.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import redis
from werkzeug.http import parse_list_header

from ticker.bus import keys
from ticker.bus.demand import REPLICA_TTL_SECS


class TokenBucket:
    """Allows `rate` events a second on average, with bursts of up to `burst`."""

    __slots__ = ("rate", "burst", "tokens", "stamp", "clock")

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self.tokens = self.burst
        self.clock = clock
        self.stamp = clock()

    def allow(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class AttemptWindow:
    """Counts attempts per key in the current second; forgets every key each new second, so
    its memory is bounded by one second's worth of distinct addresses."""

    def __init__(self, per_second: float, clock: Callable[[], float] = time.monotonic):
        self.per_second = per_second
        self.clock = clock
        self.second = int(clock())
        self.counts: dict[str, int] = {}

    def allow(self, key: str) -> bool:
        second = int(self.clock())
        if second != self.second:
            self.second, self.counts = second, {}
        self.counts[key] = self.counts.get(key, 0) + 1
        return self.counts[key] <= self.per_second


def client_address(environ: Mapping[str, Any], trusted_proxies: int) -> str:
    """The address a request came from: `REMOTE_ADDR`, or behind `trusted_proxies` proxies the
    entry of X-Forwarded-For that the farthest trusted one appended (the Nth from the right, as
    werkzeug's ProxyFix reads it). Entries left of it are whatever the client chose to send.
    With no trusted proxy the header is never read: anyone can set it."""
    remote = environ.get("REMOTE_ADDR") or ""
    if trusted_proxies <= 0:
        return remote
    forwarded = parse_list_header(environ.get("HTTP_X_FORWARDED_FOR") or "")
    if len(forwarded) < trusted_proxies:
        return remote  # not through as many proxies as configured: nothing in it is trustworthy
    return forwarded[-trusted_proxies].strip() or remote


def users_connected(client: redis.Redis) -> int:
    """Distinct users holding a connection on any live replica (one connected to two replicas
    counts once), from the counts the connection limit keeps."""
    users: set[str] = set()
    for replica in client.smembers(keys.CONNECTION_REPLICAS):
        users.update(client.hkeys(keys.user_connections_of(replica)))
    return len(users)


# KEYS: the replicas set, this replica's hash. ARGV: hash key prefix, replica id, user, limit, ttl.
# Replicas whose hash has expired (dead, or without connections) leave the set on the way.
_ADMIT = """
local total = 0
for _, replica in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local held = redis.call('HGET', ARGV[1] .. replica, ARGV[3])
  if held then
    total = total + tonumber(held)
  elseif redis.call('EXISTS', ARGV[1] .. replica) == 0 then
    redis.call('SREM', KEYS[1], replica)
  end
end
if total >= tonumber(ARGV[4]) then return 0 end
redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('SADD', KEYS[1], ARGV[2])
return 1
"""

# KEYS: this replica's hash. ARGV: user.
_RELEASE = """
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
"""


class UserConnections:
    """A replica's share of the cluster-wide count of each user's connections."""

    def __init__(self, client: redis.Redis, replica: str, ttl_secs: int = REPLICA_TTL_SECS):
        self.redis = client
        self.replica = replica
        self.key = keys.user_connections_of(replica)
        self.ttl_secs = ttl_secs
        self._admit = client.register_script(_ADMIT)
        self._release = client.register_script(_RELEASE)

    def add(self, user: str, limit: int) -> bool:
        """Count one more connection of `user` here, unless the user holds `limit` already
        across the live replicas; False (and nothing counted) then."""
        args = [keys.user_connections_of(""), self.replica, user, limit, self.ttl_secs]
        return bool(self._admit(keys=[keys.CONNECTION_REPLICAS, self.key], args=args))

    def remove(self, user: str) -> None:
        self._release(keys=[self.key], args=[user])

    def heartbeat(self, held: Mapping[str, int], rewrite: bool = False, client: redis.Redis | None = None) -> None:
        """Keep this replica's connections counted; rewrite them from `held` (what the replica
        knows it holds) when Redis lost them (a restart) or when `rewrite` says they drifted.
        `client`: the connection to use (a replica's background pool)."""
        client = client or self.redis
        if client.expire(self.key, self.ttl_secs) and not rewrite:
            return
        pipe = client.pipeline()
        pipe.delete(self.key)
        if held:
            pipe.hset(self.key, mapping=dict(held))
            pipe.expire(self.key, self.ttl_secs)
            pipe.sadd(keys.CONNECTION_REPLICAS, self.replica)
        pipe.execute()
