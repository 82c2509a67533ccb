"""Local delivery of ticks to this replica's clients: one frame per client per flush.

The tick listener hands each batch from Redis to `Fanout.dispatch`, which projects every tick
once per mode that has local members, encodes it once, and queues it in each member's
`Outbox`. `Fanout.flush` then sends each client with pending ticks a single frame. The
listener flushes as soon as Redis has nothing more to read, so at low load a tick goes out at
once, and under load the ticks that arrived meanwhile share a frame.

A client whose connection already holds `MAX_QUEUED_FRAMES` unsent frames is behind: its
outbox conflates (latest tick per token) until it catches up, and after `slow_secs` behind it
is handed to `on_slow` to be disconnected. Frames never go through the message queue (what
`ignore_queue` would do, minus re-encoding the same ticks for every member): they are written
straight to the client's WebSocket (`ticker.web.wire`), or where a connection has no wire
(long-polling, compression), put in its Engine.IO queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
from engineio import packet

from ticker import metrics
from ticker.bus.ticks import project
from ticker.web.outbox import Outbox, ticks_message

MAX_QUEUED_FRAMES = 4  # unsent frames on a connection before its client counts as behind


class Fanout:
    """Membership (token -> mode -> client sids) and the outboxes of this replica's clients."""

    def __init__(self, server: Any, on_slow: Callable[[str], None], slow_secs: float):
        self.server = server  # the python-socketio Server
        self.on_slow = on_slow
        self.slow_secs = slow_secs
        self.members: dict[int, dict[str, dict[str, Outbox]]] = {}  # token -> mode -> sid -> outbox
        self.outboxes: dict[str, Outbox] = {}
        self.eio_sids: dict[str, str] = {}
        self.waiting: set[str] = set()  # clients with something queued
        self.totals = {"delivered": 0, "frames": 0, "conflated": 0, "dropped": 0}
        self.latencies: list[float] = []  # of the frames sent in this flush, observed at its end

    def attach(self, sid: str, eio_sid: str) -> None:
        self.outboxes[sid] = Outbox()
        self.eio_sids[sid] = eio_sid

    def detach(self, sid: str) -> None:
        """The client is gone; whatever still waited for it is dropped."""
        outbox = self.outboxes.pop(sid, None)
        self.eio_sids.pop(sid, None)
        self.waiting.discard(sid)
        if outbox is not None and outbox.size:
            self._count("dropped", outbox.size, metrics.TICKS_DROPPED)

    def join(self, sid: str, token: int, mode: str) -> None:
        outbox = self.outboxes.get(sid)
        if outbox is not None:
            self.members.setdefault(token, {}).setdefault(mode, {})[sid] = outbox

    def leave(self, sid: str, token: int, mode: str) -> None:
        modes = self.members.get(token, {})
        sids = modes.get(mode)
        if sids is not None:
            sids.pop(sid, None)
            if not sids:
                del modes[mode]
            if not modes:
                self.members.pop(token, None)
        outbox = self.outboxes.get(sid)
        if outbox is not None:
            outbox.forget([token])

    def dispatch(self, ticks: list[dict]) -> None:
        """Queue a batch of full-mode-or-poorer ticks for every local member, in its mode."""
        conflated = 0
        for tick in ticks:
            modes = self.members.get(tick["instrument_token"])
            if modes:
                conflated += self._queue(tick, modes)
        if conflated:
            self._count("conflated", conflated, metrics.TICKS_CONFLATED)

    def offer(self, sid: str, ticks: list[dict]) -> None:
        """Queue already projected ticks (a snapshot) for one client and send them now."""
        outbox = self.outboxes.get(sid)
        if outbox is None:
            return
        for tick in ticks:
            outbox.add(tick["instrument_token"], tick["seq"], tick["ingest_ts"], orjson.dumps(tick))
        if outbox.size:
            self.waiting.add(sid)
            self._sent(self._flush_one(sid, time.time()))

    def flush(self) -> bool:
        """Send every waiting client one frame, or conflate it if it is behind; True while
        some client still has ticks waiting (it is behind)."""
        now = time.time()
        delivered = 0
        for sid in list(self.waiting):
            delivered += self._flush_one(sid, now)
        self._sent(delivered)
        return bool(self.waiting)

    def _queue(self, tick: dict, modes: dict[str, dict[str, Outbox]]) -> int:
        token, seq, ingest_ms = tick["instrument_token"], tick["seq"], tick["ingest_ts"]
        conflated = 0
        for mode, sids in modes.items():
            projected = project(tick, mode)
            if projected is None:
                continue
            encoded = orjson.dumps(projected)
            waiting = self.waiting
            for sid, outbox in sids.items():
                conflated += outbox.add(token, seq, ingest_ms, encoded)
                waiting.add(sid)
        return conflated

    def _flush_one(self, sid: str, now: float) -> int:
        """Send the client's queued ticks as one frame; how many ticks went (0: none could)."""
        outbox = self.outboxes.get(sid)
        connection = self.server.eio.sockets.get(self.eio_sids.get(sid))
        wire = getattr(connection, "wire", None)
        if outbox is None or connection is None or not outbox.size or (wire is not None and wire.broken):
            self.waiting.discard(sid)
            return 0
        queued = connection.queue.qsize()
        if queued >= MAX_QUEUED_FRAMES or (wire is not None and wire.busy):
            self._fall_behind(sid, outbox, now)
            return 0
        oldest_ms = outbox.oldest_ingest_ms
        ticks = outbox.take()
        self.waiting.discard(sid)
        message = ticks_message(ticks)
        if wire is not None and not queued:  # nothing waits ahead of these ticks
            wire.write(message)
        else:
            connection.send(packet.Packet(packet.MESSAGE, data=message[1:].decode()))
        self.latencies.append(max(0.0, now - oldest_ms / 1000))
        return len(ticks)

    def _sent(self, delivered: int) -> None:
        """Count what the frames since the last call carried (one metrics update per flush)."""
        if self.latencies:
            self._count("delivered", delivered, metrics.TICKS_DELIVERED)
            self._count("frames", len(self.latencies), metrics.FRAMES_SENT)
            metrics.observe_all(metrics.DELIVERY_LATENCY_SECONDS, self.latencies)
            self.latencies = []

    def _fall_behind(self, sid: str, outbox: Outbox, now: float) -> None:
        conflated = outbox.fall_behind(now)
        if conflated:
            self._count("conflated", conflated, metrics.TICKS_CONFLATED)
        if outbox.behind_for(now) >= self.slow_secs:
            self.on_slow(sid)

    def _count(self, name: str, amount: int, counter: Any) -> None:
        self.totals[name] += amount
        counter.inc(amount)
