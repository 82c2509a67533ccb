"""Delivers tick batches from Redis to the members of local rooms.

Each replica reads each batch once and emits it with `ignore_queue=True`, so the data plane
never goes back through the Socket.IO message queue to every other replica. The listener
subscribes only to the channels (token buckets) its own clients need.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable

import redis

from ticker.bus import keys
from ticker.bus.ticks import MODES, decode, project
from ticker.web.rooms import room_for

log = logging.getLogger(__name__)

POLL_SECS = 0.2  # how soon a newly needed channel is subscribed
RETRY_SECS = 1.0  # Redis unreachable: try again this often, forever


class TickListener:
    """`needed_buckets` says which channels this replica's clients need; `has_room` whether a
    room has local members; `emit(room, ticks)` delivers to them."""

    def __init__(
        self,
        client: redis.Redis,
        needed_buckets: Callable[[], set[int]],
        has_room: Callable[[str], bool],
        emit: Callable[[str, list], None],
    ):
        self.redis = client
        self.needed_buckets = needed_buckets
        self.has_room = has_room
        self.emit = emit
        self.subscribed: set[int] = set()
        self.dirty = True  # set when demand changes; the loop then syncs its channels
        self.batches = 0

    def run_forever(self) -> None:
        while True:
            try:
                self._run()
            except redis.RedisError as exc:
                log.warning("tick listener lost Redis (%s); retrying", exc)
                self.subscribed.clear()
                self.dirty = True
                time.sleep(RETRY_SECS)

    def _run(self) -> None:
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(keys.PREFIX + ":listener")  # keeps the connection open with no buckets
        while True:
            if self.dirty:
                self.dirty = False
                self._sync(pubsub)
            message = pubsub.get_message(timeout=POLL_SECS)
            if message is not None and message["type"] == "message":
                self.deliver(message["data"])

    def _sync(self, pubsub) -> None:
        needed = self.needed_buckets()
        add, drop = needed - self.subscribed, self.subscribed - needed
        if add:
            pubsub.subscribe(*(keys.tick_channel(b) for b in add))
        if drop:
            pubsub.unsubscribe(*(keys.tick_channel(b) for b in drop))
        self.subscribed = needed

    def deliver(self, data: str) -> None:
        """Emit one batch: each room gets one frame with its ticks in its mode."""
        self.batches += 1
        by_room: dict[str, list] = defaultdict(list)
        for tick in decode(data):
            token = tick["instrument_token"]
            for mode in MODES:
                room = room_for(token, mode)
                if self.has_room(room):
                    projected = project(tick, mode)
                    if projected is not None:
                        by_room[room].append(projected)
        for room, ticks in by_room.items():
            self.emit(room, ticks)
