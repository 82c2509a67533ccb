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
from ticker.bus.ticks import decode, encode, pack

SNAPSHOT_CHUNK = 200  # HSET arguments per Lua call (Lua's unpack has a stack limit)

_FENCED_PUBLISH = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return -1 end
local channels = tonumber(ARGV[2])
local i = 3
for _ = 1, channels do
  redis.call('publish', ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i <= #ARGV do
  local last = math.min(i + 2 * SNAPSHOT_CHUNK - 1, #ARGV)
  redis.call('hset', KEYS[2], unpack(ARGV, i, last))
  i = last + 1
end
return channels
""".replace("SNAPSHOT_CHUNK", str(SNAPSHOT_CHUNK))


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
        batches: dict[str, tuple[list[dict], list[bytes]]] = {}
        snapshot: list[Any] = []
        seqs = self.seqs
        for tick in ticks:
            token = tick["instrument_token"]
            seq = seqs.get(token, 0) + 1
            seqs[token] = seq
            tick["seq"] = seq
            tick["ingest_ts"] = now_ms
            encoded = encode(tick)
            channel = keys.channel_for(token)
            batch = batches.get(channel)
            if batch is None:
                batch = batches[channel] = ([], [])
            batch[0].append(tick)
            batch[1].append(encoded)
            snapshot += (token, encoded)
        args: list[Any] = [self.lease_value, len(batches)]
        for channel, (batch_ticks, encoded_ticks) in batches.items():
            args += (channel, pack(batch_ticks, encoded_ticks))
        if self._publish(keys=[self.lease_key, keys.LAST_TICKS], args=args + snapshot) < 0:
            raise LeaseLost("lease lost: another shard owns this slot now")
        return len(ticks)
