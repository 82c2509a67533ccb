"""The simulated Kite ticker WebSocket: connections, subscriptions, the tick clock, heartbeats.

`GET /?api_key=...&access_token=...` upgrades to the ticker stream, as `wss://ws.kite.trade`.
- A bad, unknown or expired access token: the upgrade is refused with HTTP 403 and
  `{"status": "error", "error_type": "TokenException", ...}` (what Kite does).
- More than `max_connections_per_key` (Kite: 3) open connections for one API key: the upgrade
  is refused with HTTP 429 and `error_type` NetworkException (Kite's "too many requests" type).
  The refusal happens before the upgrade, so nothing counts against the key and `KiteTicker`
  reports it through on_error/on_close and retries with backoff.
- Client text messages `{"a": "subscribe"|"unsubscribe"|"mode", "v": ...}`; `mode`'s v is
  `[mode, [tokens]]`. New subscriptions start in quote mode. Subscribing (and changing mode)
  sends the token's current tick at once, as Kite re-sends its last cached tick.
- At most `max_tokens_per_connection` (Kite: 3000) tokens per connection: the excess is
  ignored and reported in a text error frame `{"type": "error", "data": "..."}`. Unknown tokens
  and malformed messages get an error frame too; the connection stays open.
- With a replay (ticker.sim.replay), a recorded day takes the place of the random market.
- Every `1 / tick_rate` seconds the market steps every subscribed token once (all connections
  see the same tick) and each connection gets one binary frame with all its packets. A 1-byte
  heartbeat goes to every connection about once a second.
- When a connection's access token dies (invalidated, expired), it gets an error frame naming
  `TokenException` and a close (code 1008, the same text as reason). `expire_key` can make a
  key's dead tokens be refused after the upgrade instead of with a 403, and the refusal a bare
  1008 close (no error frame, no reason): the forms a client must recognise besides the 403.
- A client that cannot keep up (`OUTBOX_FRAMES` messages queued) has its TCP connection aborted.
- `push_frames` sends arbitrary raw WebSocket frames (any opcode, RSV bits, payload, even
  invalid UTF-8 in a text frame) in order with the rest of a connection's traffic: the
  malformed input a client must survive.
- A client may name its connection slot in an `X-Ticker-Slot` header (the service's shards do):
  `stats()` then counts connections per slot as well as per key, so a test can tell whether
  one slot was ever served by two connections at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import struct
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import WSMsgType, web

from ticker.feed import protocol
from ticker.sim.accounts import AccountStore
from ticker.sim.errors import error_response
from ticker.sim.market import Market
from ticker.sim.replay import ReplayMarket

HEARTBEAT_INTERVAL_SECS = 1.0  # Kite sends a 1-byte heartbeat about every second
OUTBOX_FRAMES = 256  # queued messages per connection before it counts as too slow
CLOSE_POLICY = 1008  # WebSocket close code for "token died" and "too slow"
TOKEN_DIED = "TokenException: the access token has expired or been invalidated."
SLOT_HEADER = "X-Ticker-Slot"  # the service's shards name their connection slot in it
_CLOSE = object()  # outbox sentinel: close the socket after what is queued

# How a dead token is refused: "token" = an error frame naming TokenException, then a 1008
# close with the same reason (what Kite sends an open connection); "bare" = a 1008 close with
# no error frame and no reason (ambiguous: the client must ask Kite's REST API).
RefusalSignal = Literal["token", "bare"]


def error_frame(message: str) -> str:
    """A Kite text error frame."""
    return json.dumps({"type": "error", "data": message})


@dataclass(frozen=True)
class RawFrame:
    """A WebSocket frame exactly as it goes on the wire (server to client: unmasked)."""

    wire: bytes

    @classmethod
    def build(cls, opcode: int, payload: bytes, fin: bool = True, rsv: int = 0) -> RawFrame:
        """Any opcode (0-15), RSV bits (0-7) and payload, valid or not."""
        first = (0x80 if fin else 0) | (rsv & 0x7) << 4 | (opcode & 0xF)
        size = len(payload)
        if size < 126:
            header = struct.pack("!BB", first, size)
        elif size < 1 << 16:
            header = struct.pack("!BBH", first, 126, size)
        else:
            header = struct.pack("!BBQ", first, 127, size)
        return cls(header + payload)


class TickerConnection:
    """One client WebSocket: its subscriptions (token -> mode) and its outgoing queue."""

    def __init__(self, connection_id: int, api_key: str, access_token: str,
                 ws: web.WebSocketResponse, transport: asyncio.BaseTransport | None,
                 slot: str = "") -> None:
        self.id = connection_id
        self.api_key = api_key
        self.access_token = access_token
        self.slot = slot
        self.ws = ws
        self.transport = transport
        self.modes: dict[int, str] = {}
        self.max_tokens = 0
        self.stalled_until = 0.0
        self.pongs_while_stalled = False
        self.outbox: asyncio.Queue[Any] = asyncio.Queue(maxsize=OUTBOX_FRAMES)
        self.closing = False
        self.close_reason = ""

    def stalled(self, now: float) -> bool:
        """Whether an operator stall (`/_sim/stall`) silences this connection now."""
        return now < self.stalled_until

    def queue(self, message: bytes | str | RawFrame) -> bool:
        """Queue a message for the writer; False if the client is too slow to take it.
        Messages to a closing or stalled connection are dropped."""
        if self.closing or self.stalled(time.time()):
            return True
        try:
            self.outbox.put_nowait(message)
        except asyncio.QueueFull:
            return False
        return True

    async def write_loop(self) -> None:
        """Send queued messages in order; stop on the close sentinel or a dead socket."""
        try:
            while (message := await self.outbox.get()) is not _CLOSE:
                if isinstance(message, bytes):
                    await self.ws.send_bytes(message)
                elif isinstance(message, RawFrame):
                    # Between whole frames of aiohttp's writer (this task is its only user).
                    if self.transport is not None:
                        self.transport.write(message.wire)
                else:
                    await self.ws.send_str(message)
            await self.ws.close(code=CLOSE_POLICY, message=self.close_reason.encode())
        except (ConnectionError, RuntimeError):  # the client went away mid-send
            self.abort()

    def close(self, reason: str, error: bool = True) -> None:
        """Send an error frame (unless not `error`), then close with `reason`; what is already
        queued goes first."""
        if self.closing:
            return
        self.close_reason = reason
        try:
            if error:
                self.outbox.put_nowait(error_frame(reason))
            self.outbox.put_nowait(_CLOSE)
        except asyncio.QueueFull:
            self.abort()
        self.closing = True

    def abort(self) -> None:
        """Drop the TCP connection without a closing handshake (what a network failure looks like)."""
        self.closing = True
        if self.transport is not None:
            self.transport.abort()


class TickerHub:
    """All ticker connections, the shared tick clock and the heartbeat loop."""

    def __init__(self, market: Market | ReplayMarket, accounts: AccountStore, tick_rate: float,
                 max_tokens_per_connection: int, max_connections_per_key: int) -> None:
        self.market = market
        self.accounts = accounts
        self.tick_rate = tick_rate
        self.max_tokens = max_tokens_per_connection
        self.max_connections = max_connections_per_key
        self.connections: dict[int, TickerConnection] = {}
        self._ids = itertools.count(1)
        self._subscribers: Counter[int] = Counter()  # token -> connections subscribed to it
        self._max_connections_seen: Counter[str] = Counter()
        self._connections_made: Counter[str] = Counter()  # per key, ever (upgrades accepted)
        self._max_slot_connections: Counter[str] = Counter()
        self._max_tokens_seen = 0
        self.totals: Counter[str] = Counter()
        self.refusals: dict[str, tuple[bool, RefusalSignal]] = {}  # api key -> (after upgrade, signal)

    # -- the WebSocket endpoint --

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """`GET /?api_key=&access_token=`: check the token and the key's limit, then stream."""
        api_key = request.query.get("api_key", "")
        access_token = request.query.get("access_token", "")
        valid = self.accounts.is_valid(api_key, access_token, time.time())
        if not valid and not self.refusals.get(api_key, (False, "token"))[0]:
            return error_response(403, "TokenException", "Incorrect `api_key` or `access_token`.")
        if self._open_count(api_key) >= self.max_connections:
            self.totals["connections_refused_over_limit"] += 1  # a client broke Kite's limit
            return error_response(
                429, "NetworkException",
                f"Too many connections: at most {self.max_connections} per api_key.")
        ws = web.WebSocketResponse(autoping=False, max_msg_size=0)
        connection = self._register(api_key, access_token, ws, request.transport,
                                    request.headers.get(SLOT_HEADER, ""))
        writer = None
        try:
            await ws.prepare(request)
            writer = asyncio.create_task(connection.write_loop())
            if not valid:  # a dead token refused after the upgrade (`expire_key`)
                self._refuse(connection)
            await self._read_loop(connection)
        finally:
            self._unregister(connection)
            if writer is not None:
                writer.cancel()
        return ws

    async def _read_loop(self, connection: TickerConnection) -> None:
        async for message in connection.ws:
            if message.type == WSMsgType.TEXT:
                self.on_text(connection, message.data)
            elif message.type == WSMsgType.PING:
                if not connection.stalled(time.time()) or connection.pongs_while_stalled:
                    await connection.ws.pong(message.data)
            elif message.type == WSMsgType.BINARY:
                self._send_error(connection, "Binary messages are not understood; send JSON text.")

    def _open_count(self, api_key: str) -> int:
        return sum(1 for c in self.connections.values() if c.api_key == api_key)

    def _register(self, api_key: str, access_token: str, ws: web.WebSocketResponse,
                  transport: asyncio.BaseTransport | None, slot: str) -> TickerConnection:
        connection = TickerConnection(next(self._ids), api_key, access_token, ws, transport, slot)
        self.connections[connection.id] = connection
        now_open = self._open_count(api_key)
        self._max_connections_seen[api_key] = max(self._max_connections_seen[api_key], now_open)
        self._connections_made[api_key] += 1
        if slot:
            on_slot = sum(1 for c in self.connections.values() if c.slot == slot)
            self._max_slot_connections[slot] = max(self._max_slot_connections[slot], on_slot)
        self.totals["connections"] += 1
        return connection

    def _unregister(self, connection: TickerConnection) -> None:
        self.connections.pop(connection.id, None)
        self._forget(connection, list(connection.modes))

    # -- client messages --

    def on_text(self, connection: TickerConnection, text: str) -> None:
        """Handle one client message; anything malformed gets an error frame."""
        message = protocol.parse_text(text) or {}
        action, value = message.get("a"), message.get("v")
        if action in ("subscribe", "unsubscribe"):
            tokens = self._tokens_or_error(connection, value)
            if tokens is not None:
                (self.subscribe if action == "subscribe" else self.unsubscribe)(connection, tokens)
        elif action == "mode":
            self._on_mode(connection, value)
        else:
            self._send_error(connection, f"Invalid message {text[:200]!r}: expected "
                             '{"a": "subscribe"|"unsubscribe"|"mode", "v": ...}.')

    def _tokens_or_error(self, connection: TickerConnection, value: Any) -> list[int] | None:
        tokens = _token_list(value)
        if tokens is None:
            self._send_error(connection,
                             f"Invalid instrument tokens {value!r:.200}: expected a list of integers.")
        return tokens

    def _on_mode(self, connection: TickerConnection, value: Any) -> None:
        if not (isinstance(value, list) and len(value) == 2 and value[0] in protocol.MODES):
            self._send_error(connection, f"Invalid mode message {value!r:.200}: expected "
                             '["ltp"|"quote"|"full", [tokens]].')
            return
        tokens = self._tokens_or_error(connection, value[1])
        if tokens is not None:
            self.set_mode(connection, value[0], tokens)

    def subscribe(self, connection: TickerConnection, tokens: list[int]) -> None:
        """Subscribe in quote mode (up to the per-connection limit) and send current ticks."""
        known = [t for t in tokens if self.market.knows(t)]
        unknown = [t for t in tokens if not self.market.knows(t)]
        new = [t for t in known if t not in connection.modes]
        room = max(0, self.max_tokens - len(connection.modes))
        accepted, excess = new[:room], new[room:]
        now = time.time()
        for token in accepted:
            self.market.ensure(token, now)
            connection.modes[token] = protocol.MODE_QUOTE
            self._subscribers[token] += 1
        self._note_token_count(connection)
        if unknown:
            self._send_error(connection, f"Unknown instrument tokens ignored: {unknown[:50]}")
        if excess:
            self.totals["tokens_refused_over_limit"] += len(excess)  # a client broke Kite's limit
            self._send_error(connection, f"Subscription limit of {self.max_tokens} instruments per "
                             f"connection reached: {len(excess)} tokens ignored.")
        self._send_ticks(connection, [t for t in known if t in connection.modes])

    def unsubscribe(self, connection: TickerConnection, tokens: list[int]) -> None:
        """Stop streaming the tokens on this connection."""
        self._forget(connection, [t for t in tokens if connection.modes.pop(t, None)])

    def set_mode(self, connection: TickerConnection, mode: str, tokens: list[int]) -> None:
        """Change the mode of subscribed tokens (others are ignored) and send them at once."""
        changed = [t for t in tokens if t in connection.modes]
        for token in changed:
            connection.modes[token] = mode
        self._send_ticks(connection, changed)

    def _forget(self, connection: TickerConnection, tokens: Iterable[int]) -> None:
        for token in tokens:
            connection.modes.pop(token, None)
            self._subscribers[token] -= 1
            if self._subscribers[token] <= 0:
                del self._subscribers[token]

    def _note_token_count(self, connection: TickerConnection) -> None:
        connection.max_tokens = max(connection.max_tokens, len(connection.modes))
        self._max_tokens_seen = max(self._max_tokens_seen, connection.max_tokens)

    # -- sending --

    def _send_error(self, connection: TickerConnection, message: str) -> None:
        self._queue(connection, error_frame(message))
        self.totals["error_frames"] += 1

    def _send_ticks(self, connection: TickerConnection, tokens: list[int]) -> None:
        if not tokens or connection.stalled(time.time()) or connection.closing:
            return
        # A replay has no packet for a token before its first recorded one.
        packets = [p for t in tokens if (p := self.market.packet(t, connection.modes[t])) is not None]
        self._send_packets(connection, packets)

    def _send_packets(self, connection: TickerConnection, packets: list[bytes]) -> None:
        for start in range(0, len(packets), protocol.MAX_PACKETS_PER_FRAME):
            chunk = packets[start:start + protocol.MAX_PACKETS_PER_FRAME]
            self._queue(connection, protocol.encode_frame(chunk))
            self.totals["frames"] += 1
            self.totals["packets"] += len(chunk)

    def _queue(self, connection: TickerConnection, message: bytes | str | RawFrame) -> None:
        if not connection.queue(message):
            self.totals["slow_consumers_closed"] += 1
            connection.abort()

    def send_recorded(self, packets: list[tuple[int, bytes]]) -> None:
        """A replayed frame's (token, packet)s: to each connection, those of its tokens, cut to
        its mode, in one frame (ticker.sim.replay)."""
        now = time.time()
        for connection in list(self.connections.values()):
            modes = connection.modes
            if connection.closing or connection.stalled(now):
                continue
            mine = [protocol.cut_packet(p, modes[t]) for t, p in packets if t in modes]
            if mine:
                self._send_packets(connection, mine)

    def send_text(self, api_key: str, text: str) -> int:
        """A text frame, as it is, to the key's open connections; how many."""
        targets = [c for c in self.connections.values() if c.api_key == api_key]
        for connection in targets:
            self._queue(connection, text)
        return len(targets)

    def subscribed_tokens(self) -> int:
        """Tokens some connection subscribes to now."""
        return len(self._subscribers)

    def busiest_outbox(self) -> int:
        """Messages queued on the connection with the most waiting."""
        return max((c.outbox.qsize() for c in self.connections.values()), default=0)

    outbox_limit = OUTBOX_FRAMES

    def push_text(self, api_key: str, payload: dict[str, Any]) -> int:
        """Send a text frame (e.g. an order update) to the key's open connections; how many."""
        targets = [c for c in self.connections.values() if c.api_key == api_key]
        for connection in targets:
            self._queue(connection, json.dumps(payload))
        return len(targets)

    def push_frames(self, api_key: str, frames: list[RawFrame]) -> int:
        """Send raw frames, in order, to the key's open connections; how many connections."""
        targets = [c for c in self.connections.values() if c.api_key == api_key]
        for connection in targets:
            for frame in frames:
                self._queue(connection, frame)
        self.totals["raw_frames"] += len(frames) * len(targets)
        return len(targets)

    # -- the clocks --

    async def run_clock(self) -> None:
        """Step the market `tick_rate` times a second and send each connection one frame."""
        loop = asyncio.get_running_loop()
        period = 1.0 / self.tick_rate
        next_at = loop.time()
        while True:
            next_at += period
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            if loop.time() - next_at > period:  # fell behind (a busy loop): skip, don't burst
                next_at = loop.time()
            self.step(time.time())

    def step(self, now: float) -> None:
        """One market step for every subscribed token, fanned out to every connection."""
        self.market.step(list(self._subscribers), now)
        for connection in list(self.connections.values()):
            self._send_ticks(connection, list(connection.modes))

    async def run_heartbeats(self) -> None:
        """About once a second: a heartbeat to each connection; close those whose token died."""
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL_SECS)
            now = time.time()
            self.close_unauthorised(now)
            for connection in list(self.connections.values()):
                if not connection.stalled(now):
                    self._queue(connection, protocol.HEARTBEAT)
                    self.totals["heartbeats"] += 1

    # -- operator controls (/_sim/...) --

    def _selected(self, api_key: str | None) -> list[TickerConnection]:
        return [c for c in self.connections.values() if api_key in (None, c.api_key)]

    def close_unauthorised(self, now: float) -> int:
        """Close connections whose access token is no longer valid; how many."""
        dead = [c for c in self.connections.values()
                if not self.accounts.is_valid(c.api_key, c.access_token, now)]
        for connection in dead:
            self._refuse(connection)
        return len(dead)

    def expire_key(self, api_key: str, after_upgrade: bool = False, signal: RefusalSignal = "token") -> int:
        """Kill the key's access tokens and close its connections, refusing them with `signal`.
        With `after_upgrade`, later connections with a dead token of this key are accepted,
        then refused the same way, rather than answered with a 403. Returns how many open
        connections were closed."""
        self.refusals[api_key] = (after_upgrade, signal)
        self.accounts.expire(api_key)
        return self.close_unauthorised(time.time())

    def _refuse(self, connection: TickerConnection) -> None:
        if self.refusals.get(connection.api_key, (False, "token"))[1] == "bare":
            connection.close("", error=False)
        else:
            connection.close(TOKEN_DIED)

    def drop(self, api_key: str | None = None) -> int:
        """Abort connections (all, or one key's) without a closing handshake; how many."""
        targets = self._selected(api_key)
        for connection in targets:
            connection.abort()
        return len(targets)

    def stall(self, seconds: float, api_key: str | None = None, pongs: bool = False) -> int:
        """Silence open connections for `seconds`: no ticks, no heartbeats, no pongs unless
        `pongs`. The market keeps moving; ticks missed meanwhile are not replayed."""
        targets = self._selected(api_key)
        until = time.time() + seconds
        for connection in targets:
            connection.stalled_until = until
            connection.pongs_while_stalled = pongs
        return len(targets)

    def stats(self) -> dict[str, Any]:
        """Connections per key (now, max at once ever, total ever accepted) and per named slot
        (now, max at once ever), tokens per connection, totals sent."""
        per_key: dict[str, dict[str, int]] = defaultdict(lambda: {"now": 0, "max": 0, "total": 0})
        for api_key, seen in self._max_connections_seen.items():
            per_key[api_key].update(max=seen, total=self._connections_made[api_key])
        per_slot: dict[str, dict[str, int]] = defaultdict(lambda: {"now": 0, "max": 0})
        for slot, seen in self._max_slot_connections.items():
            per_slot[slot]["max"] = seen
        for connection in self.connections.values():
            per_key[connection.api_key]["now"] += 1
            if connection.slot:
                per_slot[connection.slot]["now"] += 1
        return {
            "connections_per_key": dict(per_key),
            "connections_per_slot": dict(per_slot),
            "connections": [
                {"id": c.id, "api_key": c.api_key, "slot": c.slot, "tokens": len(c.modes),
                 "max_tokens": c.max_tokens, "modes": dict(Counter(c.modes.values())),
                 "stalled": c.stalled(time.time())}
                for c in self.connections.values()
            ],
            "max_tokens_per_connection_seen": self._max_tokens_seen,
            "subscribed_tokens": len(self._subscribers),
            "limits": {"max_tokens_per_connection": self.max_tokens,
                       "max_connections_per_key": self.max_connections},
            "tick_rate": self.tick_rate,
            "totals": dict(self.totals),
        }

    async def close_all(self) -> None:
        """On shutdown: close every connection so clients see a proper close."""
        for connection in list(self.connections.values()):
            with contextlib.suppress(Exception):
                await connection.ws.close(code=1001, message=b"server shutdown")


def _token_list(value: Any) -> list[int] | None:
    """The value as a list of int tokens, or None if it isn't one."""
    if not isinstance(value, list):
        return None
    if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t <= 0xFFFFFFFF for t in value):
        return None
    return list(dict.fromkeys(value))  # de-duplicated, order kept
