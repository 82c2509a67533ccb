"""The one choke point where ticks enter Redis. Only a shard that holds its lease calls it.

Publishing is fenced: one Lua script checks that the caller's lease value is still the one in
Redis, then publishes the batches and updates the snapshots, atomically. A shard that lost its
lease (paused past its TTL, partitioned) cannot publish even before it notices.

Each tick carries the bus epoch its `seq` counts in (`ticker.bus.epoch`); the same script checks
that the epoch is still current, so no tick is ever stamped with a sequence that continues from
state Redis has lost. When the epoch moved, the publisher starts every token's sequence afresh
under the new epoch and publishes again.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from ticker.bus import keys
from ticker.bus.epoch import BusEpoch
from ticker.bus.ticks import decode, encode_all, pack

log = logging.getLogger(__name__)

SNAPSHOT_CHUNK = 200  # snapshots per HSET in the Lua script (its unpack has a stack limit)

# Each batch is `ticker.bus.ticks.pack`'s: a line of rows `[token, seq, ingest_ts, mode, epoch]`, then
# one encoded tick per line. The snapshots are cut from the batches here, so each tick crosses
# to Redis once. (cjson reads a token as a double; Redis writes a double that holds an integer,
# as every token below 2^53 does, back as that integer.)
# The snapshot half, shared with the cluster's per-bucket script (ticker.bus.sharded): KEYS[2] is
# the snapshot hash, and ARGV from the third on, two by two, are (channel, batch).
SNAPSHOTS_LUA = """
local fields = {}
for i = 4, #ARGV, 2 do
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
""".replace("SNAPSHOT_CHUNK", str(2 * SNAPSHOT_CHUNK))
_FENCED_PUBLISH = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('hget', KEYS[3], 'id') ~= ARGV[2] then return -2 end
for i = 3, #ARGV, 2 do
  redis.call('publish', ARGV[i], ARGV[i + 1])
end""" + SNAPSHOTS_LUA + "return 1\n"


EPOCH_CHECK_SECS = 1.0  # how often the publisher asks whether the epoch moved without Redis losing it


class LeaseLost(Exception):
    """The publisher's lease is no longer the one in Redis: stop streaming."""


class TickPublisher:
    """Stamps each tick with a per-token `seq`, its `epoch` and `ingest_ts`, then publishes one
    batch per channel (`ticker.bus.ticks.pack`) and keeps each token's last tick as the snapshot
    for new subscribers, in one fenced round trip per flush."""

    unpublished = 0  # ticks lost to an unreachable bus (one Redis: a failed flush raises instead)

    def __init__(self, client: redis.Redis, lease_key: str, lease_value: str):
        self.redis = client
        self.lease_key = lease_key
        self.lease_value = lease_value
        self.seqs: dict[int, int] = {}
        self.bus_epoch = BusEpoch(client)
        self.epoch: int | None = None
        self.epoch_checked = 0.0
        self.epochs_begun = 0  # epochs this publisher had to move to (Redis lost or failed over)
        self._publish = client.register_script(_FENCED_PUBLISH)

    def resume_seqs(self, tokens: list[int]) -> None:
        """Continue each token's sequence from its snapshot, so `seq` stays monotonic across
        shard restarts and takeovers; a snapshot of another epoch does not count."""
        self._check_epoch()
        missing = [t for t in tokens if t not in self.seqs]
        if not missing:
            return
        for token, raw in zip(missing, self.redis.hmget(keys.LAST_TICKS, missing), strict=True):
            snapshot = decode(raw) if raw else None
            self.seqs[token] = snapshot["seq"] if snapshot and snapshot.get("epoch") == self.epoch else 0

    def publish(self, ticks: list[dict[str, Any]]) -> int:
        """Publish `ticks` (parsed by the feed); returns how many were published. Raises
        LeaseLost when another shard owns the slot now, redis.RedisError when Redis fails."""
        if not ticks:
            return 0
        self._check_epoch()
        if self._publish_once(ticks) == -2:  # the epoch moved since we last looked
            self._check_epoch(force=True)
            if self._publish_once(ticks) == -2:
                raise redis.ResponseError("the bus epoch moved twice during one publish")
        return len(ticks)

    def _check_epoch(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and self.epoch is not None and now - self.epoch_checked < EPOCH_CHECK_SECS:
            return
        epoch = self.bus_epoch.current()
        self.epoch_checked = now
        if epoch != self.epoch:
            if self.epoch is not None:
                self.epochs_begun += 1
                log.warning("bus epoch moved from %s to %s: every token's seq starts again", self.epoch, epoch)
            self.epoch = epoch
            self.seqs.clear()  # counted in the old epoch: they continue nothing in the new one

    def _publish_once(self, ticks: list[dict[str, Any]]) -> int:
        now_ms = int(time.time() * 1000)
        seqs, epoch = self.seqs, self.epoch
        for tick in ticks:
            token = tick["instrument_token"]
            seqs[token] = tick["seq"] = seqs.get(token, 0) + 1
            tick["epoch"] = epoch
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
        args: list[Any] = [self.lease_value, epoch]
        for bucket, (batch_ticks, encoded_ticks) in batches.items():
            args += (keys.TICK_CHANNELS[bucket], pack(batch_ticks, encoded_ticks))
        outcome = self._publish(keys=[self.lease_key, keys.LAST_TICKS, keys.EPOCH], args=args)
        if outcome == -1:
            raise LeaseLost("lease lost: another shard owns this slot now")
        if outcome == -2:
            for tick in ticks:  # not published: the next attempt counts them again
                seqs[tick["instrument_token"]] -= 1
        return outcome
