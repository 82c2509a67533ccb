"""Per-client batching and conflation (pure logic, no I/O).

Ticks for one client wait in its `Outbox` only when they cannot go straight out: the client is
behind, or a token was just subscribed. While the client keeps up, every tick is kept in order.
Once its connection is backed up (it stopped reading, or reads slower than ticks arrive) the
outbox keeps only the latest tick of each token until it catches up: a slow client costs a
bounded amount of memory and gets the freshest prices, never an ever-growing queue.

A newly subscribed token is watched for a while: its snapshot and the live stream can race,
so the outbox remembers the last position it queued for the token and drops anything not newer.
A tick's position is `(epoch, seq)`: a tick of a later epoch is newer whatever its `seq`
(`ticker.bus.epoch`).
"""

from __future__ import annotations

Position = tuple[int, int]  # (epoch, seq): orders a token's ticks across epochs


class Outbox:
    """Encoded ticks waiting for one client, grouped by token."""

    __slots__ = ("pending", "seen", "watch_until", "size", "oldest_ingest_ms", "behind_since")

    def __init__(self) -> None:
        self.pending: dict[int, list[bytes]] = {}
        self.seen: dict[int, Position] = {}  # watched token -> last position queued ((0, 0): none yet)
        self.watch_until = 0.0
        self.size = 0
        self.oldest_ingest_ms = 0
        self.behind_since: float | None = None

    def watch(self, token: int, until: float) -> None:
        """`token` was just subscribed: until `until` (at the latest), a tick not newer than the
        last one queued for it (a snapshot racing the live stream) is dropped."""
        self.seen.setdefault(token, (0, 0))
        self.watch_until = max(self.watch_until, until)

    def settle(self, until: float) -> None:
        """The snapshot was queued: the watch need only outlast live ticks still on their way."""
        self.watch_until = min(self.watch_until, until)

    def watching(self, now: float) -> bool:
        if self.seen and now >= self.watch_until:
            self.seen = {}
        return bool(self.seen)

    def add(self, token: int, position: Position, ingest_ms: int, encoded: bytes) -> int:
        """Queue one tick at `position` ((epoch, seq)); returns how many queued ticks it
        replaced (conflated)."""
        seen = self.seen.get(token)
        if seen is not None:
            if position <= seen:
                return 0  # already queued or sent
            self.seen[token] = position
        if not self.size:
            self.oldest_ingest_ms = ingest_ms
        waiting = self.pending.get(token)
        if waiting is None:
            self.pending[token] = [encoded]
            self.size += 1
            return 0
        if self.behind_since is None:
            waiting.append(encoded)
            self.size += 1
            return 0
        self.pending[token] = [encoded]
        return len(waiting)

    def fall_behind(self, now: float) -> int:
        """The client cannot take more now: keep the latest tick per token; returns how many
        ticks that conflated."""
        if self.behind_since is None:
            self.behind_since = now
        conflated = 0
        for token, waiting in self.pending.items():
            if len(waiting) > 1:
                conflated += len(waiting) - 1
                self.pending[token] = waiting[-1:]
        self.size -= conflated
        return conflated

    def behind_for(self, now: float) -> float:
        return 0.0 if self.behind_since is None else now - self.behind_since

    def take(self) -> list[bytes]:
        """Everything queued, oldest first per token, and the client counts as caught up."""
        ticks = [encoded for waiting in self.pending.values() for encoded in waiting]
        self.pending = {}
        self.size = 0
        self.behind_since = None
        return ticks

    def forget(self, tokens: list[int]) -> None:
        """The client unsubscribed `tokens`: drop what waits for them and their seq memory."""
        for token in tokens:
            self.size -= len(self.pending.pop(token, ()))
            self.seen.pop(token, None)


def ticks_message(encoded_ticks: list[bytes]) -> bytes:
    """The Engine.IO message (`4`) carrying a Socket.IO EVENT packet (`2`) `ticks` with
    already-encoded ticks: each tick is encoded once, by the shard, not once per client."""
    return b'42["ticks",[' + b",".join(encoded_ticks) + b"]]"
