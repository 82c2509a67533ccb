"""Ingest benchmark: how many ticks one shard process parses and publishes per second.

    .venv/bin/python -m bench.ingest [--seconds 5] [--packets 500] [--recorder-runs 3] [--recorder-only]

Frames are built as Kite sends them (many packets per frame) and fed to the shard's own code
path: `parse_frame`, then `TickPublisher.publish` (stamping, encoding, one fenced Lua call per
frame into the real Redis). It compares publishing each tick on its own (a PUBLISH and an
HSET per tick, pipelined per frame, and unpipelined), and reports the parsers alone with
`KiteTicker._parse_binary` for reference. CPU time is the process's own (`time.process_time`),
so the figure is per core; Redis runs on the other core.

Then the recorder's cost (ticker.feed.recorder, RECORD_DIR set): parse + publish with the
recorder off and on, in alternated runs (a shared machine's load drifts; alternating spreads
it over both), the recorder writing every frame to a temporary directory and flushed once a
second as the shard does; with the bytes on disk per tick. Its frames come from the
simulator's random-walk market, whose ticks compress about as real ones would.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import date
from functools import partial
from pathlib import Path

from kiteconnect import KiteTicker

from bench.machine import describe
from ticker.bus import keys
from ticker.bus.connection import redis_client
from ticker.bus.publisher import TickPublisher
from ticker.bus.ticks import encode
from ticker.feed.protocol import NSE, encode_frame, encode_packet, parse_frame
from ticker.feed.recorder import FrameRecorder
from ticker.feed.recording import BINARY
from ticker.sim.market import Market
from ticker.sim.universe import generate_universe

REDIS_URL = "redis://127.0.0.1:6379/15"
LEASE = "bench:lease"


def market_tick(token: int, step: int) -> dict:
    price = 150_000 + (step * 7 + token) % 900
    return {
        "instrument_token": token, "last_price": price, "last_traded_quantity": 5 + step % 50,
        "average_traded_price": price - 20, "volume_traded": 100_000 + step * 13,
        "total_buy_quantity": 40_000 + step, "total_sell_quantity": 38_000 + step,
        "open": 149_000, "high": 151_000, "low": 148_500, "close": 149_500,
        "last_trade_time": 1_795_000_000 + step, "oi": 0, "oi_day_high": 0, "oi_day_low": 0,
        "exchange_timestamp": 1_795_000_000 + step,
        "depth": {"buy": [(10, price - 5 * i, 2) for i in range(1, 6)],
                  "sell": [(10, price + 5 * i, 2) for i in range(1, 6)]},
    }


def frames(mode: str, packets: int, count: int = 20) -> list[bytes]:
    tokens = [(n << 8) | NSE for n in range(1000, 1000 + packets)]
    return [encode_frame([encode_packet(market_tick(t, s), mode) for t in tokens]) for s in range(count)]


def simulated_frames(mode: str, packets: int, count: int = 40) -> list[bytes]:
    """Frames of the simulator's random-walk market (ticker.sim.market): prices, volumes and
    depth that move as a market's do, so compression meets about the entropy of real ticks
    (`frames` repeats a formula, which gzip squeezes three times harder)."""
    universe = {row.instrument_token: row for row in generate_universe(7, date(2026, 11, 27))}
    tokens = [t for t, row in universe.items() if row.segment in ("NSE", "NFO-OPT")][:packets]
    market, now = Market(universe, 7, history=1), 1_795_000_000.0
    for token in tokens:
        market.ensure(token, now)
    batch = []
    for _ in range(count):
        now += 0.5
        market.step(tokens, now)
        batch.append(encode_frame([market.packet(t, mode) for t in tokens]))
    return batch


def rate(work, batch: list[bytes], seconds: float) -> tuple[float, float]:
    """(ticks per CPU second, ticks per wall second) of `work(frame) -> ticks` over `seconds`."""
    ticks, cpu0, wall0 = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - wall0 < seconds:
        for frame in batch:
            ticks += work(frame)
    return ticks / (time.process_time() - cpu0), ticks / (time.perf_counter() - wall0)


def publish_each(client, frame: bytes) -> int:
    ticks = parse_frame(frame)
    pipe = client.pipeline(transaction=False)
    for tick in ticks:
        tick["seq"], tick["ingest_ts"] = 1, int(time.time() * 1000)
        encoded = encode(tick)
        pipe.publish(keys.channel_for(tick["instrument_token"]), encoded)
        pipe.hset(keys.LAST_TICKS, tick["instrument_token"], encoded)
    pipe.execute()
    return len(ticks)


def publish_each_unpipelined(client, frame: bytes) -> int:
    ticks = parse_frame(frame)
    for tick in ticks:
        tick["seq"], tick["ingest_ts"] = 1, int(time.time() * 1000)
        encoded = encode(tick)
        client.publish(keys.channel_for(tick["instrument_token"]), encoded)
        client.hset(keys.LAST_TICKS, tick["instrument_token"], encoded)
    return len(ticks)


class RecordedIngest:
    """The shard's path with the recorder on: record the frame, then parse and publish it;
    flushed once a second, as the shard's state report does."""

    def __init__(self, publisher: TickPublisher, directory: Path):
        self.publisher = publisher
        self.recorder = FrameRecorder(directory, "bench:0", retention_days=0)
        self.flushed = time.monotonic()

    def __call__(self, frame: bytes) -> int:
        self.recorder.record(BINARY, frame)
        ticks = self.publisher.publish(parse_frame(frame))
        if time.monotonic() - self.flushed >= 1.0:
            self.recorder.flush()
            self.flushed = time.monotonic()
        return ticks


def recorder_cost(publisher: TickPublisher, packets: int, seconds: float, runs: int) -> None:
    print(f"\nrecorder off vs on (parse + publish, one fenced batch per frame; the simulator's random-walk "
          f"frames), {runs} alternated runs of {seconds:.0f} s each, then the recorder's own work alone")
    print(f"{'mode':6} {'recorder':12} {'ticks/CPU-s per run':34} {'mean':>9} {'µs CPU/tick':>12} {'disk B/tick':>12}")
    for mode in ("quote", "full"):
        batch = simulated_frames(mode, packets)
        figures: dict[str, list[float]] = {"off": [], "on": []}  # then the recorder's own work alone
        disk = 0.0
        with tempfile.TemporaryDirectory(prefix="bench-recorder-") as directory:
            for _ in range(runs):
                figures["off"].append(rate(lambda f: publisher.publish(parse_frame(f)), batch, seconds)[0])
                recorded = RecordedIngest(publisher, Path(directory))
                figures["on"].append(rate(recorded, batch, seconds)[0])
                recorded.recorder.close()
                assert recorded.recorder.errors == 0, recorded.recorder.error
                disk = recorded.recorder.path.stat().st_size / (recorded.recorder.frames * packets)
            alone = FrameRecorder(Path(directory), "bench:1", retention_days=0)
            figures["record alone"] = [rate(partial(_record, alone, packets), batch, seconds)[0]]
            alone.close()
        for name, runs_ in figures.items():
            mean = sum(runs_) / len(runs_)
            shown = " / ".join(f"{r:,.0f}" for r in runs_)
            on_disk = f"{disk:12.1f}" if name == "on" else f"{'':12}"
            print(f"{mode:6} {name:12} {shown:34} {mean:9,.0f} {1e6 / mean:12.2f} {on_disk}")


def _record(recorder: FrameRecorder, packets: int, frame: bytes) -> int:
    recorder.record(BINARY, frame)
    return packets


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--packets", type=int, default=500, help="packets per Kite frame")
    parser.add_argument("--recorder-runs", type=int, default=3, help="alternated runs of recorder off and on")
    parser.add_argument("--recorder-only", action="store_true", help="measure the recorder's cost alone")
    args = parser.parse_args()
    client = redis_client(REDIS_URL)
    client.flushdb()
    client.set(LEASE, "bench:1")
    publisher = TickPublisher(client, LEASE, "bench:1")
    print(f"machine: {describe()}")
    if not args.recorder_only:
        parse_and_publish(client, publisher, args)
    if args.recorder_runs:
        recorder_cost(publisher, args.packets, args.seconds, args.recorder_runs)
    client.flushdb()


def parse_and_publish(client, publisher: TickPublisher, args: argparse.Namespace) -> None:
    oracle = KiteTicker("k", "t")
    print(f"frames of {args.packets} packets, {args.seconds:.0f} s per figure\n")
    print(f"{'mode':6} {'path':44} {'ticks/CPU-s':>12} {'ticks/s wall':>13} {'µs CPU/tick':>12}")
    for mode in ("quote", "full"):
        batch = frames(mode, args.packets)
        for name, work, secs in (
            ("KiteTicker._parse_binary (reference)", lambda f: len(oracle._parse_binary(f)), args.seconds),
            ("parse_frame alone", lambda f: len(parse_frame(f)), args.seconds),
            ("parse + publish, one fenced batch per frame", lambda f: publisher.publish(parse_frame(f)), args.seconds),
            ("parse + publish each tick, pipelined", lambda f: publish_each(client, f), args.seconds),
            ("parse + publish each tick, a round trip each", lambda f: publish_each_unpipelined(client, f),
             min(args.seconds, 2)),
        ):
            cpu_rate, wall_rate = rate(work, batch if "round trip" not in name else batch[:2], secs)
            print(f"{mode:6} {name:44} {cpu_rate:12,.0f} {wall_rate:13,.0f} {1e6 / cpu_rate:12.2f}")


if __name__ == "__main__":
    main()
