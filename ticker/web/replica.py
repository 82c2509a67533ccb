"""This web process's state: its clients, their subscriptions, its demand and tick listener."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass, field

from flask import Flask

from ticker.bus import keys
from ticker.bus.connection import redis_client
from ticker.bus.demand import ReplicaDemand
from ticker.db import session_for
from ticker.extensions import socketio
from ticker.registry.instruments import Registry
from ticker.web.listener import TickListener

log = logging.getLogger(__name__)

HEARTBEAT_SECS = 5.0


@dataclass
class Client:
    """One Socket.IO connection: who it is and what it streams (token -> mode)."""

    user: str
    claims: dict
    subscriptions: dict[int, str] = field(default_factory=dict)


class Replica:
    def __init__(self, app: Flask):
        self.app = app
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.redis = redis_client(app.config["REDIS_URL"])
        self.demand = ReplicaDemand(self.redis, self.id)
        self.registry = Registry(self.redis, lambda: session_for(app.config["DATABASE_URL"]))
        self.clients: dict[str, Client] = {}
        self.listener = TickListener(self.redis, self.needed_buckets, self.has_room, self.emit_ticks)

    def needed_buckets(self) -> set[int]:
        return {keys.bucket_of(token) for token in self.demand.counts}

    def has_room(self, room: str) -> bool:
        return bool(socketio.server.manager.rooms.get("/", {}).get(room))

    def emit_ticks(self, room: str, ticks: list) -> None:
        socketio.emit("ticks", ticks, to=room, ignore_queue=True)

    def demand_changed(self) -> None:
        self.listener.dirty = True

    def start(self) -> None:
        """Start the background work of a serving process (not of CLI or Celery processes)."""
        socketio.start_background_task(self.listener.run_forever)
        socketio.start_background_task(self._heartbeat_forever)
        log.info("replica %s started", self.id)

    def _heartbeat_forever(self) -> None:
        while True:
            try:
                self.demand.heartbeat()
            except Exception as exc:  # noqa: BLE001  (Redis down: keep trying, never die)
                log.warning("replica heartbeat failed: %s", exc)
            socketio.sleep(HEARTBEAT_SECS)


_replica: Replica | None = None


def replica() -> Replica:
    global _replica
    if _replica is None:
        from flask import current_app

        _replica = Replica(current_app._get_current_object())
    return _replica
