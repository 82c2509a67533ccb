"""Live candles for Socket.IO clients (docs/API.md, "Live candles").

A client subscribes to candles of its tokens (`subscribe` with `candles: ["minute", ...]`); the
builder (ticker.candles.builder) publishes every change of a candle on the candle channels, and
this replica's listener hands those messages here. Between two flushes each client gets at most
one update per candle (its latest state; a completed candle's `closed: true` update is never
replaced by a later forming one, since they are different candles), in one `candles` event.

Subscribing first makes sure the candle channel is live, then sends today's candles so far
(ticker.candles.store.today) and only then this client's live updates: an update that arrived
before the history was read is already in it and is dropped, so a client never sees a candle go
back. A client the tick fan-out finds behind (its socket's buffer full) gets no candles until it
catches up; its updates wait conflated meanwhile, so they take bounded memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from ticker.bus import keys
from ticker.candles.build import kite_time
from ticker.web.errors import CANDLES_UNAVAILABLE

EVENT = "candles"
RESTORED_EVENT = "candles_restored"
# Why live candles stopped (the `reason` of `candles_unavailable`).
BUILDER_DOWN = "builder_down"  # the builder stopped reporting (killed, stuck, lost Redis)
NO_BUILDER = "no_builder"  # no builder ever reported to this Redis: the `candles` process is not running


def candle_json(token: int, interval: str, values: list, closed: bool) -> dict[str, Any]:
    """A candle as the `candles` event carries it (the keys of kiteconnect's historical records)."""
    start, open_, high, low, close, volume, oi = values
    return {"instrument_token": token, "interval": interval, "date": kite_time(start), "open": open_,
            "high": high, "low": low, "close": close, "volume": volume, "oi": oi, "closed": closed}


class LiveCandles:
    """Who wants which candles, and the updates waiting for the next flush. `emit(sid, event,
    data)` sends to one local client; `is_behind(sid)` says whether its socket is backed up."""

    def __init__(self, emit: Callable[[str, str, Any], None], is_behind: Callable[[str], bool]):
        self.emit = emit
        self.is_behind = is_behind
        self.members: dict[tuple[int, str], set[str]] = {}  # (token, interval) -> sids
        self.wanted: dict[str, set[tuple[int, str]]] = {}  # sid -> its (token, interval)s
        self.pending: dict[str, dict[tuple[int, str, int], dict]] = {}  # sid -> (token, interval, start) -> update
        self.priming: set[str] = set()  # clients whose history is being read: no live updates yet
        self.sent = 0
        self.builder_up: bool | None = None  # as last seen (Replica.check_candles); None: not looked yet
        self.down_reason = ""

    def builder_seen(self, up: bool, reason: str = "") -> None:
        """Note whether a candle builder is reporting. Going down (or found down at the first
        look) tells every client holding candles `error` `candles_unavailable` with `reason`;
        coming back after that tells them `candles_restored`. Their candle subscriptions are
        kept either way."""
        was, self.builder_up, self.down_reason = self.builder_up, up, reason
        if up and was is False:
            for sid in list(self.wanted):
                self.emit(sid, RESTORED_EVENT, {})
        elif not up and was is not False:
            for sid in list(self.wanted):
                self.tell_down(sid)

    def tell_down(self, sid: str) -> None:
        """Tell one client that live candles are not being built now, and why."""
        why = {NO_BUILDER: "no candle builder is running (the `candles` process)",
               BUILDER_DOWN: "the candle builder stopped reporting"}.get(self.down_reason, "no candle builder")
        self.emit(sid, "error", {"code": CANDLES_UNAVAILABLE, "reason": self.down_reason,
                                 "message": f"{why}: live candles resume by themselves when it is back"})

    def needed_buckets(self) -> set[int]:
        return {keys.bucket_of(token) for token, _ in self.members}

    def subscribe(self, sid: str, tokens: list[int], intervals: list[str]) -> None:
        mine = self.wanted.setdefault(sid, set())
        for token in tokens:
            for interval in intervals:
                self.members.setdefault((token, interval), set()).add(sid)
                mine.add((token, interval))

    def unsubscribe(self, sid: str, tokens: list[int]) -> None:
        """Drop the client's candles of `tokens` (every interval), and their waiting updates."""
        mine = self.wanted.get(sid)
        if not mine:
            return
        gone = {pair for pair in mine if pair[0] in tokens}
        for pair in gone:
            sids = self.members.get(pair)
            if sids is not None:
                sids.discard(sid)
                if not sids:
                    del self.members[pair]
        mine -= gone
        waiting = self.pending.get(sid)
        if waiting:
            for key in [k for k in waiting if (k[0], k[1]) in gone]:
                del waiting[key]
        if not mine:
            self.release(sid)

    def release(self, sid: str) -> None:
        for pair in self.wanted.pop(sid, ()):
            sids = self.members.get(pair)
            if sids is not None:
                sids.discard(sid)
                if not sids:
                    del self.members[pair]
        self.pending.pop(sid, None)
        self.priming.discard(sid)

    def intervals_of(self, sid: str, token: int) -> list[str]:
        return sorted(interval for t, interval in self.wanted.get(sid, ()) if t == token)

    def dispatch(self, batch: bytes | str) -> None:
        """Note one candle-channel message (ticker.candles.store.publish's format)."""
        members, pending = self.members, self.pending
        for token, interval, values, closed in orjson.loads(batch):
            sids = members.get((token, interval))
            if not sids:
                continue
            key = (token, interval, values[0])
            for sid in sids:
                waiting = pending.setdefault(sid, {})
                if not (closed is False and waiting.get(key, {}).get("closed")):
                    waiting[key] = candle_json(token, interval, values, closed)

    def begin_history(self, sid: str, pairs: set[tuple[int, str]]) -> None:
        """The client's history of `pairs` is about to be read: hold its live updates, and drop
        those already waiting for these candles (the history read after them covers them)."""
        self.priming.add(sid)
        waiting = self.pending.get(sid)
        if waiting:
            for key in [k for k in waiting if (k[0], k[1]) in pairs]:
                del waiting[key]

    def end_history(self, sid: str, history: list[dict]) -> None:
        """Send the history, then let the client's live updates flow."""
        self.priming.discard(sid)
        if history and sid in self.wanted:
            self.emit(sid, EVENT, history)
            self.sent += len(history)

    def flush(self) -> bool:
        """Send each client its waiting updates in one `candles` event; False (nothing here
        needs a quick retry: a client behind is tried at the next flush)."""
        if not self.pending:
            return False
        for sid in list(self.pending):
            if sid in self.priming or self.is_behind(sid):
                continue
            updates = self.pending.pop(sid)
            if updates:
                self.emit(sid, EVENT, list(updates.values()))
                self.sent += len(updates)
        return False
