"""The one choke point where ticks enter Redis. Only a shard that holds its lease calls it."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import redis

from ticker.bus import keys
from ticker.bus.ticks import decode, encode


class TickPublisher:
    """Stamps each tick with a per-token `seq` and `ingest_ts`, then publishes one batch per
    channel and keeps each token's last tick as the snapshot for new subscribers, in one
    round trip per flush."""

    def __init__(self, client: redis.Redis):
        self.redis = client
        self.seqs: dict[int, int] = {}

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
        batches: dict[str, list[str]] = defaultdict(list)
        snapshot: dict[int, str] = {}
        for tick in ticks:
            token = tick["instrument_token"]
            seq = self.seqs.get(token, 0) + 1
            self.seqs[token] = seq
            tick["seq"] = seq
            tick["ingest_ts"] = now_ms
            encoded = encode(tick)
            batches[keys.channel_for(token)].append(encoded)
            snapshot[token] = encoded
        pipe = self.redis.pipeline(transaction=False)
        for channel, encoded_ticks in batches.items():
            pipe.publish(channel, "[" + ",".join(encoded_ticks) + "]")
        pipe.hset(keys.LAST_TICKS, mapping=snapshot)
        pipe.execute()
        return len(ticks)
