"""The one choke point where ticks enter Redis. Only a shard that holds its lease calls it.

Publishing is fenced: one Lua script checks that the caller's lease value is still the one in
Redis, then publishes the batches and updates the snapshots, atomically. A shard that lost its
lease (paused past its TTL, partitioned) cannot publish even before it notices.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from ticker.bus import keys
from ticker.bus.ticks import decode, encode_all, pack

SNAPSHOT_CHUNK = 200  # snapshots per HSET in the Lua script (its unpack has a stack limit)

# Each batch is `ticker.bus.ticks.pack`'s: a line of rows `[token, seq, ingest_ts, mode]`, then
# one encoded tick per line. The snapshots are cut from the batches here, so each tick crosses
# to Redis once. (cjson reads a token as a double; Redis writes a double that holds an integer,
# as every token below 2^53 does, back as that integer.)
_FENCED_PUBLISH = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return -1 end
for i = 2, #ARGV, 2 do
  redis.call('publish', ARGV[i], ARGV[i + 1])
end
local fields = {}
for i = 3, #ARGV, 2 do
  local batch = ARGV[i]
  local newline = string.find(batch, '\\n', 1, true)
  local rows = cjson.decode(string.sub(batch, 1, newline - 1))
  local at = newline + 1
  for r = 1, #rows do
    local stop = string.find(batch, '\\n', at, true) or (#batch + 1)
    fields[#fields + 1] = rows[r][1]
    fields[#fields + 1] = string.sub(batch, at, stop - 1)
    at = stop + 1
    if #fields >= SNAPSHOT_CHUNK then
      redis.call('hset', KEYS[2], unpack(fields))
      fields = {}
    end
  end
end
if #fields > 0 then redis.call('hset', KEYS[2], unpack(fields)) end
return 1
""".replace("SNAPSHOT_CHUNK", str(2 * SNAPSHOT_CHUNK))


class LeaseLost(Exception):
    """The publisher's lease is no longer the one in Redis: stop streaming."""


class TickPublisher:
    """Stamps each tick with a per-token `seq` and `ingest_ts`, then publishes one batch per
    channel (`ticker.bus.ticks.pack`) and keeps each token's last tick as the snapshot for new
    subscribers, in one fenced round trip per flush."""

    def __init__(self, client: redis.Redis, lease_key: str, lease_value: str):
        self.redis = client
        self.lease_key = lease_key
        self.lease_value = lease_value
        self.seqs: dict[int, int] = {}
        self._publish = client.register_script(_FENCED_PUBLISH)

    def resume_seqs(self, tokens: list[int]) -> None:
        """Continue each token's sequence from its snapshot, so `seq` stays monotonic across
        shard restarts and takeovers."""
        missing = [t for t in tokens if t not in self.seqs]
        if not missing:
            return
        for token, raw in zip(missing, self.redis.hmget(keys.LAST_TICKS, missing), strict=True):
            self.seqs[token] = decode(raw)["seq"] if raw else 0

    def publish(self, ticks: list[dict[str, Any]]) -> int:
        """Publish `ticks` (parsed by the feed); returns how many were published."""
        if not ticks:
            return 0
        now_ms = int(time.time() * 1000)
        seqs = self.seqs
        for tick in ticks:
            token = tick["instrument_token"]
            seqs[token] = tick["seq"] = seqs.get(token, 0) + 1
            tick["ingest_ts"] = now_ms
        batches: dict[int, tuple[list[dict], list[bytes]]] = {}
        bucket_of = keys.bucket_of
        for tick, encoded in zip(ticks, encode_all(ticks), strict=True):
            bucket = bucket_of(tick["instrument_token"])
            batch = batches.get(bucket)
            if batch is None:
                batch = batches[bucket] = ([], [])
            batch[0].append(tick)
            batch[1].append(encoded)
        args: list[Any] = [self.lease_value]
        for bucket, (batch_ticks, encoded_ticks) in batches.items():
            args += (keys.TICK_CHANNELS[bucket], pack(batch_ticks, encoded_ticks))
        if self._publish(keys=[self.lease_key, keys.LAST_TICKS], args=args) < 0:
            raise LeaseLost("lease lost: another shard owns this slot now")
        return len(ticks)
