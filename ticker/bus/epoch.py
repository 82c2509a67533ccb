"""The bus epoch: which run of Redis state a tick's `seq` counts in.

A tick's `seq` counts up by one per tick of its token, continuing across shard restarts and
takeovers from the last tick kept in Redis. When Redis loses that state (restarted empty, or
failed over to a replica that had not received the latest writes), the count cannot continue:
it would start again at 1, and a client would see `seq 946 -> 1` as if nothing had happened.
So every tick also carries the epoch it was counted in, and the epoch changes whenever the
sequence may have restarted. Within one epoch a token's `seq` never goes backwards; a new
epoch tells clients (and replicas) that a token's sequence starts afresh. This is the contract
Centrifugo's streams keep with their `offset` and `epoch`.

The epoch lives in Redis as a hash {id, replid}: `id` is Redis' clock in milliseconds when the
epoch began (so a later epoch has a larger id, whatever process made it), `replid` the
replication ID of the server that holds it. Redis gives a server a new replication ID when it
starts without its data and when a replica is promoted (a Sentinel failover); either way the
state may be older than what clients saw, and the epoch is renewed. A lost hash (Redis restarted
empty) is renewed too. The script reads the replication ID itself, so the check and the epoch it
returns are the same server's even while clients move from a demoted master to a promoted one.
"""

from __future__ import annotations

import redis

from ticker.bus import keys

# The server's replication ID (`INFO replication` `master_replid`), read inside a script.
# (Redis 5 and later replicate scripts by their effects, so reading INFO before writing is allowed.)
REPLID_LUA = "string.match(redis.call('info', 'replication'), 'master_replid:(%w+)') or ''"

# KEYS: the epoch hash (ARGV is ignored). Returns the current epoch id, starting a new epoch (larger than any
# before it) if there is none or the server's replication ID changed since it began.
ENSURE_EPOCH = """
local replid = REPLID_LUA
local id = tonumber(redis.call('hget', KEYS[1], 'id'))
if id and redis.call('hget', KEYS[1], 'replid') == replid then return id end
local now = redis.call('time')
local fresh = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if id and fresh <= id then fresh = id + 1 end
redis.call('hset', KEYS[1], 'id', string.format('%.0f', fresh), 'replid', replid)
return fresh
""".replace("REPLID_LUA", REPLID_LUA)


class BusEpoch:
    """Reads (and when needed begins) the current epoch. `current()` costs an INFO and a script
    call: callers check it when they start and then about once a second, not per tick."""

    def __init__(self, client: redis.Redis):
        self.redis = client
        self._ensure = client.register_script(ENSURE_EPOCH)

    def current(self) -> int:
        """The epoch id now (milliseconds since 1970 by Redis' clock when it began)."""
        return int(self._ensure(keys=[keys.EPOCH]))
