"""A recorded trading day made by the simulator's market model, with a feed's quirks.

No machine here reaches Kite, so tests of what is built from ticks (candles) and replays need a
day's recording that looks like one a shard made: this runs `ticker.sim.market.InstrumentState`
on a stepped clock from the open to the close and writes full-mode binary frames
(`ticker.feed.protocol`) with their receive times into the recording format of
`ticker.feed.recording`. `flask sim make-day` is its command line.

The quirks a real feed has, each placed deterministically by the seed and reported in `DayReport`:

- late packets: now and then one instrument's packet is held back and arrives in a later frame,
  some within a few hundred milliseconds, some seconds late (past a candle's close grace);
- a replayed packet: an old packet sent again much later (as after a reconnect);
- a feed gap: no frame at all (not even heartbeats) for `gap_secs`, while the market moves on;
- a volume reset: from `reset_at` one instrument's `volume_traded` counts again from zero;
- an illiquid instrument that trades a few times a minute at most, and one that starts
  streaming mid-session (the day's first tick is not the open's);
- heartbeats (1-byte frames) every second.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path

from ticker.clock import IST
from ticker.feed import protocol
from ticker.feed.recording import BINARY, file_name, write_recording
from ticker.sim.market import InstrumentState
from ticker.sim.universe import Instrument, generate_universe

OPEN, CLOSE = time(9, 15), time(15, 30)
HEARTBEAT = b"\x00"
LATENCY_SECS = (0.02, 0.15)  # exchange stamp to the shard's receive time
LATE_SECS = ((0.2, 0.9), (4.0, 12.0))  # a held-back packet: briefly, or beyond a candle's grace
LATE_PROBABILITY = 0.004  # per packet
SLOT = "day"


@dataclass
class DayReport:
    """What was written and where the quirks fell (epoch seconds)."""

    path: Path
    frames: int = 0
    ticks: int = 0
    late_packets: int = 0
    replayed_packets: int = 0
    gap: tuple[float, float] | None = None
    reset: tuple[int, float] | None = None  # (token, when)
    illiquid: int | None = None
    late_starter: tuple[int, float] | None = None  # (token, first step)
    final_volume: dict[int, int] = field(default_factory=dict)  # token -> last volume_traded sent


@dataclass
class DayPlan:
    """How to make the day: `instruments` stream from the open, the first of them with a volume
    reset at `reset_after_secs` past the open, `illiquid` trades rarely, `late_starter` joins at
    `late_start_secs`. `step_secs` is the market's step; each liquid instrument ticks on about
    `activity` of the steps."""

    trading_date: date
    instruments: Sequence[Instrument]
    illiquid: Instrument | None = None
    late_starter: Instrument | None = None
    start: time = OPEN
    end: time = CLOSE
    seed: int = 7
    step_secs: float = 0.5
    activity: float = 0.7
    illiquid_activity: float = 0.004  # a trade in about a third of the minutes
    late_start_secs: float = 600.0
    gap_after_secs: float = 1500.0
    gap_secs: float = 150.0
    reset_after_secs: float = 2400.0
    replay_after_secs: float = 1800.0

    def epoch(self, moment: time) -> float:
        return datetime.combine(self.trading_date, moment, IST).timestamp()


def make_day(directory: Path, plan: DayPlan) -> DayReport:
    """Write the day's recording under `directory/<date>/` and report what it holds."""
    started = plan.epoch(plan.start)
    path = Path(directory) / plan.trading_date.isoformat() / file_name(SLOT, int(started * 1000), 0)
    report = DayReport(path)
    write_recording(path, SLOT, _frames(plan, report))
    return report


def _frames(plan: DayPlan, report: DayReport) -> Iterator[tuple[float, int, bytes]]:
    rng = random.Random(plan.seed)
    start, end = plan.epoch(plan.start), plan.epoch(plan.end)
    states = {i.instrument_token: InstrumentState(i, plan.seed, start) for i in plan.instruments}
    activity = {token: plan.activity for token in states}
    if plan.illiquid is not None:
        states[plan.illiquid.instrument_token] = InstrumentState(plan.illiquid, plan.seed, start)
        activity[plan.illiquid.instrument_token] = plan.illiquid_activity
        report.illiquid = plan.illiquid.instrument_token
    gap = (start + plan.gap_after_secs, start + plan.gap_after_secs + plan.gap_secs)
    report.gap = gap
    reset_token = plan.instruments[0].instrument_token
    reset_at = start + plan.reset_after_secs
    report.reset = (reset_token, reset_at)
    reset_offset: int | None = None
    held: list[tuple[float, int, bytes]] = []  # heap of (receive time, order, frame) of late packets
    sent: list[bytes] = []
    order = 0
    next_heartbeat = start
    now = start
    while now < end:
        if plan.late_starter is not None and report.late_starter is None and now >= start + plan.late_start_secs:
            token = plan.late_starter.instrument_token
            states[token] = InstrumentState(plan.late_starter, plan.seed, now)
            activity[token] = plan.activity
            report.late_starter = (token, now)
        if reset_offset is None and now >= reset_at:
            reset_offset = states[reset_token].volume
        packets = []
        for token, state in states.items():
            if rng.random() >= activity[token]:
                continue
            state.step(now)
            tick = state.tick()
            if token == reset_token and reset_offset is not None:
                tick["volume_traded"] -= reset_offset
            packet = protocol.encode_packet(tick, protocol.MODE_FULL)
            sent.append(packet)
            report.final_volume[token] = tick["volume_traded"]
            if rng.random() < LATE_PROBABILITY:
                low, high = LATE_SECS[rng.random() < 0.5]
                heapq.heappush(held, (now + rng.uniform(low, high), order, protocol.encode_frame([packet])))
                order += 1
                report.late_packets += 1
            else:
                packets.append(packet)
        if report.replayed_packets == 0 and now >= start + plan.replay_after_secs and sent:
            packets.append(sent[len(sent) // 3])  # an old packet sent again
            report.replayed_packets += 1
        in_gap = gap[0] <= now < gap[1]
        received = now + rng.uniform(*LATENCY_SECS)
        while held and held[0][0] <= received:
            late_at, _, frame = heapq.heappop(held)
            if not gap[0] <= late_at < gap[1]:  # one falling in the gap is lost with it
                report.ticks += 1
                yield from _emit(report, late_at, frame)
        if not in_gap:
            if packets:
                report.ticks += len(packets)
                yield from _emit(report, received, protocol.encode_frame(packets))
            if now >= next_heartbeat:
                yield from _emit(report, received, HEARTBEAT)
        if now >= next_heartbeat:
            next_heartbeat += 1.0
        sent = sent[-1000:]
        now += plan.step_secs
    for late_at, _, frame in sorted(held):
        report.ticks += 1
        yield from _emit(report, late_at, frame)


def _emit(report: DayReport, received: float, frame: bytes) -> Iterator[tuple[float, int, bytes]]:
    report.frames += 1
    yield (received, BINARY, frame)


def instruments_by_symbol(seed: int, trading_date: date, symbols: Sequence[str]) -> list[Instrument]:
    """The simulator's instruments named `EXCHANGE:TRADINGSYMBOL`, in that order. Raises
    KeyError naming a symbol the universe lacks."""
    universe = {f"{i.exchange}:{i.tradingsymbol}": i for i in generate_universe(seed, trading_date)}
    missing = [s for s in symbols if s not in universe]
    if missing:
        raise KeyError(f"not in the simulator's universe: {', '.join(missing)}")
    return [universe[s] for s in symbols]
