"""Replay of a recorded day (ticker.feed.recording) through the simulator's ticker.

With `--replay DIR` the simulator serves a recorded IST day instead of its random market,
through the same Kite protocol, to any client (the service's shards, `KiteTicker`):

- Each connection gets, for the tokens it subscribes and in its mode, the packets of every
  recorded binary frame in recorded order: the packets of one recorded frame that it
  subscribes to go out as one frame. A packet recorded in a higher mode than the connection's
  is cut down (Kite's quote packet is the first 44 bytes of its full one: protocol.cut_packet);
  one recorded in a lower mode goes out as recorded (the recording holds no more).
- Pacing: the recorded gaps between frames at `speed` 1 (real time), divided by N at speed N,
  or none (`max`): as fast as the slowest connection takes them, never so fast that the
  simulator drops a client for being slow.
- The day starts playing REPLAY_SETTLE_SECS after the first subscription (a client sends its
  subscribe and mode messages together; both apply before the first frame), not when the
  simulator starts, so a client connecting late misses nothing.
- Subscribing (or changing mode) re-sends the last replayed packet of each token, as Kite
  re-sends its last cached tick; before a token's first recorded packet, there is none.
- Recorded text frames of type `order` (order updates) and `message` (broker notices) go to the
  connections of the API key that recorded them (the slot's key; the simulator must have an
  account of that key). Recorded `error` frames are not replayed: they answered the recording
  connection's own requests (an unknown token, a dead token), which this connection did not send.
- Recorded heartbeats are not replayed: the simulator sends its own, about once a second.
- When the day ends, the simulator stops sending ticks (connections stay open, with
  heartbeats) or, with `loop`, plays the day again from its start.

The universe: the simulator's generated instruments for the replayed date (a recording made
from this simulator with the same `--seed` knows its tokens already), plus a placeholder
instrument for every recorded token the universe lacks (a recording of Kite's real feed), so
the service's registry can load them from the simulator's instruments dump.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ticker.feed import protocol
from ticker.feed.recording import BINARY, TEXT, RecordedFrame, check_day, read_day, recorded_days
from ticker.feed.sharding import slot_api_key
from ticker.sim.universe import SEGMENT_NUMBERS, Instrument

log = logging.getLogger("ticker.sim")

REPLAY_SETTLE_SECS = 0.5  # after the first subscription, before the day starts playing
DRAIN_POLL_SECS = 0.002  # at max speed, how often to look whether the clients caught up
FORWARDED_TEXT = ("order", "message")  # recorded text frame types a replay sends on
WAITING, PLAYING, ENDED = "waiting", "playing", "ended"


def parse_speed(text: str) -> float | None:
    """`1`, `N` (a positive number) or `max` (None: no pacing). ValueError for anything else."""
    if text.strip().lower() == "max":
        return None
    speed = float(text)
    if not speed > 0:
        raise ValueError(f"replay speed must be positive or 'max', not {text!r}")
    return speed


@dataclass(frozen=True)
class ReplaySpec:
    """What to replay: the recording directory, the IST date (None: the latest it holds),
    the speed (None: max) and whether to loop."""

    directory: str
    day: str | None = None
    speed: float | None = 1.0
    loop: bool = False

    def chosen_day(self) -> str:
        """The day to replay. ValueError when the directory holds no recording of it."""
        root = Path(self.directory)
        if not root.is_dir():
            raise ValueError(f"{self.directory}: {'not a directory' if root.exists() else 'no such directory'}")
        days = recorded_days(root)
        day = self.day or (days[-1] if days else None)
        if day is None or day not in days:
            raise ValueError(f"no recording of {self.day or 'any day'} in {self.directory} (it holds {days})")
        check_day(root, day)  # RecordingError, a ValueError, names a file that is not a recording
        return day


def recorded_tokens(frames: Iterable[RecordedFrame]) -> set[int]:
    """Every instrument token the frames' packets are about (one pass over the day)."""
    tokens: set[int] = set()
    for frame in frames:
        if frame.opcode == BINARY and len(frame.data) > 1:
            try:
                tokens.update(protocol.packet_token(p) for p in protocol.split_frame(frame.data) if len(p) >= 4)
            except protocol.ProtocolError:
                continue
    return tokens


_EXCHANGES = {number: name for name, number in SEGMENT_NUMBERS.items()}


def placeholder(token: int) -> Instrument:
    """An instrument row for a recorded token the generated universe lacks: named after its
    token, on the exchange its segment says (indices on NSE, as Kite lists most)."""
    segment = protocol.segment_of(token)
    index = segment == protocol.INDICES
    exchange = "NSE" if index else _EXCHANGES.get(segment, "NSE")
    return Instrument(token, token >> 8, f"REPLAY{token}", f"Recorded instrument {token}", 0.0, None, 0.0,
                      0.0 if index else 0.05, 1, "EQ", "INDICES" if index else exchange, exchange)


class ReplayMarket:
    """The hub's market during a replay: the last replayed packet of each token, cut to the
    mode asked for (what Kite re-sends on subscribe), and each token's replayed history."""

    def __init__(self, instruments: Mapping[int, Instrument], history: int) -> None:
        self._instruments = instruments
        self._last: dict[int, bytes] = {}
        self._sent: dict[int, deque[bytes]] = {}
        self._history = history

    def knows(self, token: int) -> bool:
        return token in self._instruments

    def ensure(self, token: int, now: float) -> None:
        """Nothing to create: a token's state is whatever the recording said last."""

    def step(self, tokens: Iterable[int], now: float) -> None:
        """The recording moves the market, not the clock."""

    def remember(self, packets: list[tuple[int, bytes]]) -> None:
        for token, packet in packets:
            self._last[token] = packet
            history = self._sent.get(token)
            if history is None:
                history = self._sent[token] = deque(maxlen=self._history)
            history.append(packet)

    def packet(self, token: int, mode: str) -> bytes | None:
        """The token's last replayed packet in `mode`, or None before its first."""
        packet = self._last.get(token)
        return None if packet is None else protocol.cut_packet(packet, mode)

    def sent(self, token: int) -> list[dict[str, Any]]:
        """The token's replayed ticks (up to `history`), oldest first, as `parse_frame` gives them."""
        packets = list(self._sent.get(token, ()))
        return protocol.parse_frame(protocol.encode_frame(packets)) if packets else []


class Replay:
    """Plays one recorded day into a TickerHub (ticker.sim.stream) whose market is a ReplayMarket."""

    def __init__(self, spec: ReplaySpec, day: str, hub: Any, market: ReplayMarket) -> None:
        self.spec = spec
        self.day = day
        self.hub = hub
        self.market = market
        self.state = WAITING
        self.plays = 0  # times the day was played through

    def report(self) -> dict[str, Any]:
        return {"directory": self.spec.directory, "day": self.day, "speed": self.spec.speed or "max",
                "loop": self.spec.loop, "state": self.state, "plays": self.plays}

    async def run(self) -> None:
        """Wait for the first subscription, then play the day (again and again with `loop`)."""
        while not self.hub.subscribed_tokens():
            await asyncio.sleep(0.05)
        await asyncio.sleep(REPLAY_SETTLE_SECS)
        while True:
            self.state = PLAYING
            log.info("replaying %s from %s at %s speed", self.day, self.spec.directory, self.spec.speed or "max")
            played = await self._play()
            self.plays += 1
            if not self.spec.loop or not played:  # a day without a frame would loop without ever waiting
                break
        self.state = ENDED
        log.info("replay of %s ended; connections stay open with heartbeats", self.day)

    async def _play(self) -> int:
        """Play the day once; how many frames it had."""
        loop = asyncio.get_running_loop()
        started, first, played = loop.time(), None, 0
        for frame in read_day(Path(self.spec.directory), self.day):
            played += 1
            if first is None:
                first = frame.received
            if self.spec.speed is None:
                await self._drain()
            else:
                await asyncio.sleep(max(0.0, started + (frame.received - first) / self.spec.speed - loop.time()))
            self.apply(frame)
        return played

    async def _drain(self) -> None:
        """Yield to the writers, and wait while any connection's queue is half full."""
        await asyncio.sleep(0)
        while self.hub.busiest_outbox() > self.hub.outbox_limit // 2:
            await asyncio.sleep(DRAIN_POLL_SECS)

    def apply(self, frame: RecordedFrame) -> None:
        """Send one recorded frame on (see the module's docstring for what goes where)."""
        if frame.opcode == BINARY and len(frame.data) > 1:
            try:
                packets = [(protocol.packet_token(p), p) for p in protocol.split_frame(frame.data) if len(p) >= 4]
            except protocol.ProtocolError:
                self.hub.totals["replay_frames_unreadable"] += 1
                return
            self.market.remember(packets)
            self.hub.send_recorded(packets)
            self.hub.totals["replay_frames"] += 1
        elif frame.opcode == TEXT:
            message = protocol.parse_text(frame.data)
            if message and message.get("type") in FORWARDED_TEXT:
                self.hub.send_text(slot_api_key(frame.slot), frame.data.decode("utf-8", "replace"))
                self.hub.totals["replay_texts"] += 1
