"""Socket.IO clients for the trading-day run: python-socketio's asyncio client, hundreds in one
event loop, each behaving as docs/API.md tells a client to and recording what it observed.

A `Watcher` connects with a JWT of its own, subscribes (instruments by name and tokens by
number) as soon as it is connected, and again after every reconnect, since a new connection
holds nothing. A subscribe answered `server_busy`, `bus_unavailable`, `database_unavailable` or
`rate_limited` is tried again with backoff, as the codes ask; every error is recorded all the
same. It records every tick's (epoch, seq) per token and checks the order the API promises
(never backwards; never the same twice, except a snapshot, marked `snapshot: true`, repeating
the last tick seen when a new connection subscribes again), every `error` with its code and reason, `upstream_restored`,
`unsubscribed` and `subscribed` with their reasons, connects, refusals and disconnects.

`python -m bench.chaos_clients crowd SPEC OUT` runs a crowd in a process of its own (so a
thousand clients connecting do not slow the watchers' loop) and writes what it saw to OUT.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import socketio

RETRYABLE = {"server_busy", "bus_unavailable", "database_unavailable", "rate_limited"}  # docs/API.md
SUBSCRIBE_TRIES = 4  # then the client gives up, and its subscriptions count as lost
CALL_TIMEOUT_SECS = 30.0  # a subscribe unanswered this long is a failure the client saw
CONNECT_TIMEOUT_SECS = 30.0
RECONNECT_DELAY_SECS, RECONNECT_DELAY_MAX_SECS = 0.5, 5.0  # python-socketio's backoff, doubled per try


class Watcher:
    """One client: what it asked for, what the server says it holds, and what it saw."""

    def __init__(self, number: int, url: str, jwt: str, names: list[str], tokens: list[int],
                 mode: str = "quote", reconnect: bool = True):
        self.number, self.url, self.jwt, self.mode = number, url, jwt, mode
        self.names, self.tokens = names, tokens
        self.sio = socketio.AsyncClient(reconnection=reconnect, reconnection_delay=RECONNECT_DELAY_SECS,
                                        reconnection_delay_max=RECONNECT_DELAY_MAX_SECS, randomization_factor=0.5)
        self.held: set[int] = set()
        self.connects: list[float] = []
        self.disconnects: list[float] = []
        self.refusals: list[tuple[float, str]] = []
        self.errors: list[tuple[float, str, str | None]] = []  # (time, code, reason)
        self.rejected: list[tuple[float, str]] = []  # per-token rejections in `subscribed`
        self.restored: list[float] = []
        self.moves: list[tuple[float, str, str | None]] = []  # (time, "subscribed"/"unsubscribed", reason)
        self.started_at: float | None = None  # the first connect attempt
        self.subscribed_at: float | None = None
        self.ticks = 0
        self.position: dict[int, tuple[int, int]] = {}  # token -> last (epoch, seq)
        self.session_ticked: set[int] = set()  # tokens with a tick on this connection
        self.violations: list[tuple[float, int, str, tuple, tuple]] = []
        self.snapshot_repeats = 0
        self.epoch_changes: list[tuple[float, int]] = []
        self.last_tick_at: dict[int, float] = {}
        self.longest_silence = 0.0
        self.mark_ms: float | None = None
        self.fresh_at: dict[int, float] = {}  # token -> receipt of its first tick ingested since the mark
        self._subscribing: asyncio.Task | None = None
        for event, handler in [("connect", self._on_connect), ("disconnect", self._on_disconnect),
                               ("connect_error", self._on_refused),
                               ("subscribed", self._on_subscribed), ("unsubscribed", self._on_unsubscribed),
                               ("ticks", self._on_ticks), ("error", self._on_error),
                               ("upstream_restored", self._on_restored)]:
            self.sio.on(event, handler)

    async def start(self) -> bool:
        """Connect (once: a refused first connect is recorded, not retried); True if connected."""
        self.started_at = time.time()
        try:
            await self.sio.connect(self.url, auth={"token": self.jwt}, transports=["websocket"],
                                   wait_timeout=CONNECT_TIMEOUT_SECS)
        except socketio.exceptions.ConnectionError as exc:
            if not self.refusals:
                self.refusals.append((time.time(), f"client:{exc}"[:80]))
            return False
        return True

    async def stop(self) -> None:
        await self.sio.disconnect()

    def begin(self, silence_from: float, mark: float) -> None:
        """Start observing an event: silences count from now; ticks ingested at or after `mark`
        (epoch seconds) count as fresh."""
        self.longest_silence = 0.0
        self.mark_ms = mark * 1000
        self.fresh_at = {}
        for token in self.last_tick_at:
            self.last_tick_at[token] = max(self.last_tick_at[token], silence_from)

    def silence(self, tokens: Iterable[int], now: float) -> float:
        """The longest silence of `tokens` so far in this event, counting those still silent."""
        silent = [now - self.last_tick_at.get(token, now) for token in tokens]
        return max([self.longest_silence, *silent])

    # -- handlers --

    async def _on_connect(self) -> None:
        self.connects.append(time.time())
        # Every connection, the first and each reconnect, holds nothing until it subscribes.
        # Handlers run inside the client's read loop: a call waiting here would wait forever.
        self._subscribing = asyncio.get_running_loop().create_task(self._subscribe())

    async def _on_disconnect(self, *_: Any) -> None:
        self.disconnects.append(time.time())
        self.held.clear()
        self.session_ticked.clear()
        if self._subscribing is not None:
            self._subscribing.cancel()

    async def _on_refused(self, data: Any = None) -> None:
        # python-socketio hands over {message, data: {code, message}} (docs/API.md, "Connect").
        detail = data.get("data") if isinstance(data, dict) else None
        code = detail.get("code") if isinstance(detail, dict) else data.get("code") if isinstance(data, dict) else data
        self.refusals.append((time.time(), str(code)))

    async def _subscribe(self) -> None:
        payload: dict[str, Any] = {"mode": self.mode, "tokens": self.tokens}
        if self.names:
            payload["instruments"] = self.names
        for attempt in range(SUBSCRIBE_TRIES):
            try:
                reply = await self.sio.call("subscribe", payload, timeout=CALL_TIMEOUT_SECS)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001  (a timeout or a dropped connection: what the client saw)
                self.errors.append((time.time(), f"client:{type(exc).__name__}", None))
                return
            error = reply.get("error") if isinstance(reply, dict) else {"code": "client:bad_reply"}
            if not error:
                self._took(reply)
                return
            if error.get("code") not in RETRYABLE:  # the `error` event recorded it already
                return
            await asyncio.sleep(2 ** attempt)

    def _took(self, reply: dict) -> None:
        now = time.time()
        self.held.update(reply.get("tokens") or [])
        self.rejected += [(now, rejection.get("code", "?")) for rejection in reply.get("rejected") or []]
        self.subscribed_at = self.subscribed_at or now

    async def _on_subscribed(self, data: Any = None) -> None:
        if isinstance(data, dict):
            self.held.update(data.get("tokens") or [])
            self.subscribed_at = self.subscribed_at or time.time()  # the event comes before the ack
            if data.get("reason"):
                self.moves.append((time.time(), "subscribed", data["reason"]))

    async def _on_unsubscribed(self, data: Any = None) -> None:
        if isinstance(data, dict):
            self.held.difference_update(data.get("tokens") or [])
            self.moves.append((time.time(), "unsubscribed", data.get("reason")))

    async def _on_error(self, data: Any = None) -> None:
        data = data if isinstance(data, dict) else {"code": str(data)}
        self.errors.append((time.time(), str(data.get("code")), data.get("reason")))

    async def _on_restored(self, _data: Any = None) -> None:
        self.restored.append(time.time())

    async def _on_ticks(self, ticks: list) -> None:
        now = time.time()
        for tick in ticks:
            self._check(tick, now)

    def _check(self, tick: dict, now: float) -> None:
        token = tick["instrument_token"]
        self.ticks += 1
        position = (tick.get("epoch") or 0, tick["seq"])
        last = self.position.get(token)
        first_here = token not in self.session_ticked
        self.session_ticked.add(token)
        if last is not None:
            if position[0] != last[0]:
                self.epoch_changes.append((now, token))
            if position < last:
                self.violations.append((now, token, "backwards", last, position))
            elif position == last and first_here and tick.get("snapshot"):
                self.snapshot_repeats += 1  # the snapshot of a new connection: the tick last seen
            elif position == last:
                self.violations.append((now, token, "repeated", last, position))
        self.position[token] = position
        self.longest_silence = max(self.longest_silence, now - self.last_tick_at.get(token, now))
        self.last_tick_at[token] = now
        if self.mark_ms is not None and tick["ingest_ts"] >= self.mark_ms:
            self.fresh_at.setdefault(token, now)


def dark(watchers: Iterable[Watcher], expected: Callable[[Watcher], set[int]]) -> list[tuple[Watcher, int]]:
    """(watcher, token) pairs of expected tokens with no fresh tick yet."""
    return [(w, token) for w in watchers for token in expected(w) if token not in w.fresh_at]


def recovered_at(watchers: Iterable[Watcher], expected: Callable[[Watcher], set[int]]) -> float | None:
    """When the last expected token of any watcher got its first fresh tick; None if some never did."""
    times = [w.fresh_at.get(token) for w in watchers for token in expected(w)]
    return None if not times or None in times else max(times)


async def connect_all(watchers: list[Watcher], spread_secs: float) -> None:
    """Start each watcher's connect at its share of `spread_secs`, all in one go."""
    start = time.monotonic()

    async def one(n: int, watcher: Watcher) -> None:
        await asyncio.sleep(max(0.0, start + spread_secs * n / len(watchers) - time.monotonic()))
        await watcher.start()

    await asyncio.gather(*(one(n, w) for n, w in enumerate(watchers)))


async def held_totals(watchers: list[Watcher]) -> list[int | None]:
    """How many tokens the server says each connection holds (`unsubscribe` of nothing answers
    `total`); None for a client not connected or not answering."""

    async def total(watcher: Watcher) -> int | None:
        if not watcher.sio.connected:
            return None
        try:
            reply = await watcher.sio.call("unsubscribe", {"tokens": []}, timeout=CALL_TIMEOUT_SECS)
        except Exception:  # noqa: BLE001  (no answer: the client cannot tell what it holds)
            return None
        return reply.get("total") if isinstance(reply, dict) and "total" in reply else None

    return list(await asyncio.gather(*(total(w) for w in watchers)))


# -- the crowd, in a process of its own --


async def run_crowd(url: str, spec: list[dict], spread_secs: float, settle_secs: float) -> dict:
    """Connect one client per entry of `spec` ({jwt, tokens}) within `spread_secs`; each
    subscribes at once. Waits (up to `settle_secs`) until every one has a tick of each of its
    tokens, then disconnects them all; returns what they saw."""
    watchers = [Watcher(n, url, entry["jwt"], [], entry["tokens"], reconnect=False) for n, entry in enumerate(spec)]
    started = time.time()
    for watcher in watchers:
        watcher.mark_ms = 0  # any tick counts, the snapshot too: it is what a new subscriber gets first
    await connect_all(watchers, spread_secs)
    wanted = lambda w: set(w.tokens)  # noqa: E731
    deadline = time.monotonic() + settle_secs
    while time.monotonic() < deadline and recovered_at(watchers, wanted) is None:
        await asyncio.sleep(0.2)
    report = crowd_report(watchers, started, wanted)
    report["settle_secs"] = settle_secs
    report["cpu_secs"] = time.process_time()  # this process's: is the crowd's own client the bottleneck?
    await asyncio.gather(*(w.stop() for w in watchers if w.sio.connected), return_exceptions=True)
    return report


def crowd_report(watchers: list[Watcher], started: float, wanted: Callable[[Watcher], set[int]]) -> dict:
    receiving = [w for w in watchers if w.fresh_at and wanted(w) <= set(w.fresh_at)]
    firsts = [max(w.fresh_at.values()) - started for w in receiving]
    own = sorted(max(w.fresh_at.values()) - w.started_at for w in receiving)
    connects = [w.connects[0] - started for w in watchers if w.connects]
    done = recovered_at(watchers, wanted)
    return {
        "clients": len(watchers),
        "connected": len(connects),
        "connect_secs": {"first": min(connects, default=None), "last": max(connects, default=None)},
        "refused": dict(Counter(code for w in watchers for _, code in w.refusals)),
        "subscribed": sum(w.subscribed_at is not None for w in watchers),
        "errors": dict(Counter(_code(code, reason) for w in watchers for _, code, reason in w.errors)),
        "rejected": dict(Counter(code for w in watchers for _, code in w.rejected)),
        "receiving_all": len(firsts),
        "all_receiving_secs": None if done is None else done - started,
        "median_receiving_secs": statistics.median(firsts) if firsts else None,
        # From each client's own connect attempt to a tick of each of its tokens.
        "own_secs": {"median": statistics.median(own), "p99": own[int(0.99 * (len(own) - 1))], "max": own[-1]}
        if own else None,
        "violations": sum(len(w.violations) for w in watchers),
        "ticks": sum(w.ticks for w in watchers),
    }


def _code(code: str, reason: str | None) -> str:
    return f"{code}/{reason}" if reason else code


def main() -> None:
    """`crowd SPEC OUT`: SPEC is JSON {url, spread_secs, settle_secs, clients: [{jwt, tokens}]}."""
    _, command, spec_path, out_path = sys.argv
    assert command == "crowd", command
    spec = json.loads(open(spec_path).read())
    report = asyncio.run(run_crowd(spec["url"], spec["clients"], spec["spread_secs"], spec["settle_secs"]))
    with open(out_path, "w") as out:
        json.dump(report, out)


if __name__ == "__main__":
    main()
