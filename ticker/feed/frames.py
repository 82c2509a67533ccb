"""What a shard makes of each frame Kite sends. Nothing Kite sends can raise out of here.

- A binary frame is a batch of packets: parsed (ticker.feed.protocol) and published through
  the fenced publisher. A 1-byte frame is a heartbeat.
- A text frame is JSON: `order` updates are published on the account's order channel, `error`
  messages are noted (and may say the token is refused: ticker.feed.rejection), `message`
  (broker notices) is logged.
- Everything else is malformed input: counted per kind (`malformed`, exported by the shard as
  `ticker_shard_malformed_frames_total{slot,kind}`), logged at most once a minute per kind
  with how many went unlogged, and dropped. Never fatal, and never a reason to reconnect: the
  frames around it are fine.

A binary frame whose declared packets overrun it (`truncated`) is dropped whole, not cut down
to the packets before the overrun: a packet is found only through the lengths before it, so
once one length is shown wrong (a garbled count or length, not only a frame cut short), no
packet after the first one can be trusted to start where it seems to, and a misaligned window
that happens to have a known packet length decodes into a plausible, false price. Kite's ticks
are full states, not deltas: the next frame (a second or less away) brings every token's state
again, whereas a false price, once published, reaches every subscriber and the snapshot. In a
well-framed frame, packets of a length Kite does not document are skipped and the others
published (`unknown_packet`; Kite may add packet types).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from typing import Any

import redis

from ticker.bus import keys
from ticker.bus.publisher import TickPublisher
from ticker.bus.ticks import encode
from ticker.feed import protocol, rejection
from ticker.feed.connection import is_binary
from ticker.feed.rejection import Signal

log = logging.getLogger(__name__)

MIN_FRAME_LIMIT_BYTES = 1 << 20  # Kite's largest frame, 3000 full packets, is 558,002 bytes
LOG_EVERY_SECS = 60.0  # one line per kind of malformed input a minute: a flood stays a trickle
DETAIL_CHARS = 200  # of a malformed frame, in its log line

# Kinds of malformed input (the `kind` label of ticker_shard_malformed_frames_total).
TRUNCATED = "truncated"  # binary: declared packets overrun the frame; dropped whole
UNKNOWN_PACKET = "unknown_packet"  # binary: packets of an undocumented length skipped
OVERSIZED = "oversized"  # larger than any frame the slot's subscriptions can produce; dropped
NOT_UTF8 = "not_utf8"  # text
NOT_JSON = "not_json"
NOT_OBJECT = "not_object"  # JSON, but not an object
UNKNOWN_TYPE = "unknown_type"  # an object without a type Kite documents
BAD_ORDER = "bad_order"  # an order update without an order object in `data`
PROTOCOL = "protocol"  # breaks the WebSocket protocol (reserved opcode, RSV bits, stray continuation)
KINDS = (TRUNCATED, UNKNOWN_PACKET, OVERSIZED, NOT_UTF8, NOT_JSON, NOT_OBJECT, UNKNOWN_TYPE, BAD_ORDER, PROTOCOL)


def frame_limit(capacity: int) -> int:
    """The largest frame worth parsing for a connection of `capacity` tokens: twice the
    largest Kite can send for them (all in full mode), and at least MIN_FRAME_LIMIT_BYTES."""
    return max(MIN_FRAME_LIMIT_BYTES, 2 * (2 + capacity * (2 + protocol.FULL_PACKET_SIZE)))


class QuietLog:
    """Logs a kind of event at most once per `every` seconds, saying how many went unlogged."""

    def __init__(self, slot: str, every: float = LOG_EVERY_SECS):
        self.slot = slot
        self.every = every
        self._logged_at: dict[str, float] = {}
        self._unlogged: Counter[str] = Counter()

    def warn(self, kind: str, detail: str, level: int = logging.WARNING) -> None:
        now = time.monotonic()
        if now - self._logged_at.get(kind, -self.every) < self.every:
            self._unlogged[kind] += 1
            return
        self._logged_at[kind] = now
        unlogged = self._unlogged.pop(kind, 0)
        log.log(level, "shard %s: %s from Kite (%d more since the last such line): %s",
                self.slot, kind, unlogged, detail[:DETAIL_CHARS],
                extra={"event": "kite_frame", "slot": self.slot, "kind": kind})


class FrameHandler:
    """Handles one connection slot's frames: `handle(opcode, data)` returns, for a Kite error
    frame, what it says about the access token (a rejection.Signal), and None for any other.

    Counts: `frames` (binary frames received, heartbeats included), `ticks` (published),
    `malformed` (per kind). `kite_error` is the text of Kite's last error frame. Redis errors
    and LeaseLost from publishing propagate: they are not Kite's doing.
    """

    def __init__(self, slot: str, api_key: str, client: redis.Redis, publisher: TickPublisher, max_bytes: int):
        self.slot = slot
        self.api_key = api_key
        self.redis = client
        self.publisher = publisher
        self.max_bytes = max_bytes
        self.frames = 0
        self.ticks = 0
        self.malformed: Counter[str] = Counter()
        self.kite_error: str | None = None
        self.quiet = QuietLog(slot)

    def handle(self, opcode: int, data: bytes) -> Signal | None:
        if len(data) > self.max_bytes:
            self.note(OVERSIZED, f"{len(data)} bytes, more than {self.max_bytes}")
            return None
        if is_binary(opcode):
            self._on_binary(data)
            return None
        return self._on_text(data)

    def note(self, kind: str, detail: str) -> None:
        """Count and (quietly) log one piece of malformed input."""
        self.malformed[kind] += 1
        self.quiet.warn(kind, detail)

    def _on_binary(self, data: bytes) -> None:
        self.frames += 1
        try:
            ticks, skipped = protocol.decode_frame(data)
        except protocol.ProtocolError as exc:
            self.note(TRUNCATED, f"{exc}; frame starts {data[:32].hex()}")
            return
        if skipped:
            self.note(UNKNOWN_PACKET, f"{skipped} packets of undocumented lengths skipped")
        self.ticks += self.publisher.publish(ticks)

    def _on_text(self, data: bytes) -> Signal | None:
        message = self._decode(data)
        if message is None:
            return None
        kind = message.get("type")
        if kind == "order":
            self._on_order(message)
        elif kind == "error":
            return self._on_error(message.get("data"))
        elif kind == "message":  # a broker notice: nothing to do but tell the operator
            self.quiet.warn("message", shown(message.get("data")), logging.INFO)
        else:
            self.note(UNKNOWN_TYPE, shown(message))
        return None

    def _decode(self, data: bytes) -> dict[str, Any] | None:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            self.note(NOT_UTF8, repr(data[:DETAIL_CHARS]))
            return None
        try:
            message = json.loads(text)
        except (ValueError, RecursionError):
            self.note(NOT_JSON, repr(text[:DETAIL_CHARS]))
            return None
        if not isinstance(message, dict):
            self.note(NOT_OBJECT, repr(text[:DETAIL_CHARS]))
            return None
        return message

    def _on_order(self, message: dict[str, Any]) -> None:
        order = message.get("data")
        try:
            if not isinstance(order, dict):
                raise TypeError("no order object in data")
            payload = encode(order)
        except TypeError as exc:  # orjson: an integer beyond 64 bits, nesting beyond its limit
            self.note(BAD_ORDER, f"{exc}: {shown(message)}")
            return
        self.redis.publish(keys.orders_of(self.api_key), payload)

    def _on_error(self, data: Any) -> Signal:
        text = data if isinstance(data, str) else shown(data)
        self.kite_error = f"Kite error: {text[:DETAIL_CHARS]}"
        self.quiet.warn("error", text, logging.ERROR)
        return rejection.from_error(text)


def shown(value: Any) -> str:
    """The start of `value`'s repr, for a log line (JSON nested deep enough defeats repr)."""
    try:
        return repr(value)[:DETAIL_CHARS]
    except RecursionError:
        return f"<{type(value).__name__} nested too deep to show>"
