"""Local delivery of ticks to this replica's clients: one frame per client per flush.

The tick listener hands each batch from Redis to `Fanout.dispatch`, which only notes, per mode,
the encoded tick of each token that has local members (a tick in a richer mode than a member
asked for is cut down once, for all of them) and which clients are concerned. `Fanout.flush`
then visits each such client once: it picks the ticks of the client's tokens out of the batch
(a set intersection, no per-tick work in Python) and writes them as one frame, at once. So the
first client's frame leaves before the last client's ticks are even looked at, and a tick is
never copied into a queue per client. The listener flushes as soon as Redis has nothing more to
read, so at low load a tick goes out at once, and under load the ticks that arrived meanwhile
share a frame.

A client that cannot take a frame now goes through its `Outbox` instead: it is behind when its
connection holds `MAX_QUEUED_FRAMES` unsent frames or a write is still in flight, and then the
outbox conflates (latest tick per token) until it catches up; after `slow_secs` behind it is
handed to `on_slow` to be disconnected. A client that just subscribed goes through the outbox
too for a few seconds, so its snapshot and the live stream never show it a `seq` twice or going
back. Frames never go through the message queue: they are written straight to the client's
WebSocket (`ticker.web.wire`), or where a connection has no wire (long-polling, compression),
put in its Engine.IO queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from engineio import packet

from ticker import metrics
from ticker.bus.ticks import MODE_RANK, MODES, decode, encode, project
from ticker.web.outbox import Outbox, Position, ticks_message

MAX_QUEUED_FRAMES = 4  # unsent frames on a connection before its client counts as behind
SNAPSHOT_WAIT_SECS = 30.0  # after a subscribe, longest watch for its snapshot to be offered
WATCH_SECS = 5.0  # after the snapshot, how long a live tick older than it could still arrive


def wire_of(connection: Any) -> Any:
    """The connection's `Wire` once its WebSocket has taken over (never during an upgrade's
    probe, when a tick would reach the client before `3probe`); None otherwise."""
    return getattr(connection, "wire", None) if getattr(connection, "upgraded", False) else None


class Member:
    """One client as the fan-out knows it."""

    __slots__ = ("eio_sid", "outbox", "tokens")

    def __init__(self, eio_sid: str):
        self.eio_sid = eio_sid
        self.outbox = Outbox()
        self.tokens: dict[str, set[int]] = {}  # mode -> tokens subscribed in it


class Fanout:
    """Membership (token -> mode -> client sids), the clients, and the ticks read since the last
    flush (the window)."""

    def __init__(self, server: Any, on_slow: Callable[[str], None], slow_secs: float):
        self.server = server  # the python-socketio Server
        self.on_slow = on_slow
        self.slow_secs = slow_secs
        self.members: dict[int, dict[str, set[str]]] = {}
        self.clients: dict[str, Member] = {}
        self.waiting: set[str] = set()  # clients with ticks in their outbox
        self.totals = {"delivered": 0, "frames": 0, "conflated": 0, "dropped": 0}
        self.latencies: list[float] = []  # of the frames sent in this flush, observed at its end
        # The window: per mode, token -> its encoded ticks since the last flush (two or more
        # joined by commas, their (position, tick) pairs in `repeats`) and its last position
        # ((epoch, seq)); the clients concerned; the oldest ingest time.
        self.window: dict[str, dict[int, bytes]] = {mode: {} for mode in MODES}
        self.seqs: dict[str, dict[int, Position]] = {mode: {} for mode in MODES}
        self.repeats: dict[tuple[str, int], list[tuple[Position, bytes]]] = {}
        self.concerned: set[str] = set()
        self.oldest_ms = 0

    def attach(self, sid: str, eio_sid: str) -> None:
        self.clients[sid] = Member(eio_sid)

    def detach(self, sid: str) -> None:
        """The client is gone; whatever still waited for it is dropped."""
        member = self.clients.pop(sid, None)
        self.waiting.discard(sid)
        if member is not None and member.outbox.size:
            self._count("dropped", member.outbox.size, metrics.TICKS_DROPPED)

    def eio_sid(self, sid: str) -> str | None:
        member = self.clients.get(sid)
        return member.eio_sid if member is not None else None

    def behind(self) -> int:
        """How many clients are behind now."""
        return sum(1 for sid in self.waiting
                   if (member := self.clients.get(sid)) is not None and member.outbox.behind_since is not None)

    def join(self, sid: str, token: int, mode: str) -> None:
        member = self.clients.get(sid)
        if member is not None:
            self.members.setdefault(token, {}).setdefault(mode, set()).add(sid)
            member.tokens.setdefault(mode, set()).add(token)
            member.outbox.watch(token, time.time() + SNAPSHOT_WAIT_SECS)

    def leave(self, sid: str, token: int, mode: str) -> None:
        modes = self.members.get(token, {})
        sids = modes.get(mode)
        if sids is not None:
            sids.discard(sid)
            if not sids:
                del modes[mode]
            if not modes:
                self.members.pop(token, None)
        member = self.clients.get(sid)
        if member is not None:
            tokens = member.tokens.get(mode)
            if tokens is not None:
                tokens.discard(token)
                if not tokens:
                    del member.tokens[mode]
            member.outbox.forget([token])

    def dispatch(self, batch: list[tuple[list, bytes]]) -> None:
        """Note a batch (`ticker.bus.ticks.unpack`) for the clients concerned, in their modes."""
        members, window, seqs, concerned = self.members, self.window, self.seqs, self.concerned
        for (token, seq, ingest_ms, mode, epoch), encoded in batch:
            modes = members.get(token)
            if not modes:
                continue
            if not concerned or ingest_ms < self.oldest_ms:
                self.oldest_ms = ingest_ms
            decoded = None
            for wanted, sids in modes.items():
                if wanted == mode:
                    data = encoded
                elif MODE_RANK[wanted] > MODE_RANK[mode]:
                    continue  # never pass a poorer tick off as richer
                else:
                    decoded = decoded or decode(encoded)
                    data = encode(project(decoded, wanted))
                mode_seqs = seqs[wanted]
                earlier = mode_seqs.get(token)
                mode_seqs[token] = position = (epoch, seq)
                if earlier is None:
                    window[wanted][token] = data
                else:
                    self._repeat(wanted, token, earlier, position, data)
                concerned |= sids

    def offer(self, sid: str, ticks: list[dict]) -> None:
        """Queue already projected ticks (a snapshot) for one client and send them now."""
        member = self.clients.get(sid)
        if member is None:
            return
        for tick in ticks:
            position = (tick.get("epoch") or 0, tick["seq"])
            member.outbox.add(tick["instrument_token"], position, tick["ingest_ts"], encode(tick))
        member.outbox.settle(time.time() + WATCH_SECS)
        if member.outbox.size:
            self.waiting.add(sid)
            self._sent(self._flush_outbox(sid, member, time.time()))

    def flush(self) -> bool:
        """Send every concerned client one frame (or queue it in its outbox if it cannot take
        one now), and retry the clients with queued ticks; True while some client still has
        ticks waiting (it is behind)."""
        now = time.time()
        delivered = 0
        visited = self.concerned
        if visited:
            self.concerned = set()
            clients = self.clients
            for sid in visited:
                member = clients.get(sid)
                if member is not None:
                    delivered += self._deliver(sid, member, now)
            for ticks in self.window.values():
                ticks.clear()
            for mode_seqs in self.seqs.values():
                mode_seqs.clear()
            self.repeats.clear()
        for sid in [sid for sid in self.waiting if sid not in visited]:
            member = self.clients.get(sid)  # a client cut off meanwhile (on_slow yields) is gone
            if member is not None:
                delivered += self._flush_outbox(sid, member, now)
        self._sent(delivered)
        return bool(self.waiting)

    def _repeat(self, mode: str, token: int, earlier: Position, position: Position, data: bytes) -> None:
        """A second tick of `token` in one window: both go, in order, in the same frame."""
        ticks = self.window[mode]
        repeats = self.repeats.setdefault((mode, token), [(earlier, ticks[token])])
        repeats.append((position, data))
        ticks[token] += b"," + data

    def _deliver(self, sid: str, member: Member, now: float) -> int:
        """Write the window's ticks for one client as a frame now, or queue them."""
        connection = self.server.eio.sockets.get(member.eio_sid)
        if connection is None:
            return 0
        wire = wire_of(connection)
        outbox = member.outbox
        if wire is None or wire.busy or outbox.size or outbox.watching(now) or connection.queue.qsize():
            self._queue(sid, member)
            return self._flush_outbox(sid, member, now)
        if wire.broken:
            return 0
        parts: list[bytes] = []
        window = self.window
        for mode, tokens in member.tokens.items():
            ticks = window[mode]
            if ticks:
                parts += map(ticks.__getitem__, ticks.keys() & tokens)
        if not parts:
            return 0
        wire.write(ticks_message(parts))
        self.latencies.append(max(0.0, now - self.oldest_ms / 1000))
        if self.repeats:
            return len(parts) + sum(len(r) - 1 for (mode, token), r in self.repeats.items()
                                    if token in member.tokens.get(mode, ()))
        return len(parts)

    def _queue(self, sid: str, member: Member) -> None:
        """Put the window's ticks for one client in its outbox."""
        outbox, window, seqs, oldest = member.outbox, self.window, self.seqs, self.oldest_ms
        conflated = 0
        for mode, tokens in member.tokens.items():
            ticks, mode_seqs = window[mode], seqs[mode]
            for token in ticks.keys() & tokens:
                repeats = self.repeats.get((mode, token))
                if repeats is None:
                    conflated += outbox.add(token, mode_seqs[token], oldest, ticks[token])
                else:
                    for position, data in repeats:
                        conflated += outbox.add(token, position, oldest, data)
        if conflated:
            self._count("conflated", conflated, metrics.TICKS_CONFLATED)
        if outbox.size:
            self.waiting.add(sid)

    def _flush_outbox(self, sid: str, member: Member, now: float) -> int:
        """Send the client's queued ticks as one frame; how many ticks went (0: none could)."""
        outbox = member.outbox
        connection = self.server.eio.sockets.get(member.eio_sid)
        wire = wire_of(connection)
        if connection is None or not outbox.size or (wire is not None and wire.broken):
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
