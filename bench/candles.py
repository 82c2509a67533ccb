"""Candle benchmark: the candle builder's CPU per tick against the shard's ingest CPU per tick.

    .venv/bin/python -m bench.candles [--seconds 3] [--packets 500]

Both run here, in one process, one after the other, on the same frames (bench.ingest's: Kite
frames of `--packets` instruments, each tick a trade one second after the last). The shard's
figure is its own path (`parse_frame` + `TickPublisher.publish`); the builder's is what its
process does with the batches the shard published: `CandleService.fold` (unpack, decode each
tick, fold it into the five intervals' candles) and `flush` (close what is due, save the touched
series and the completed candles in Redis, publish the live updates), plus the PostgreSQL
upsert of the completed candles. CPU time is the process's own (`time.process_time`); Redis and
PostgreSQL run beside it. A Redis server of its own on a free port, and a scratch database.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import tempfile
import time

from bench.ingest import LEASE, frames
from bench.machine import describe
from ticker.bus import keys
from ticker.bus.connection import redis_client
from ticker.bus.publisher import TickPublisher
from ticker.bus.ticks import decode, encode_all, pack, unpack
from ticker.candles.build import INTERVALS
from ticker.candles.builder import CandleService
from ticker.db import engine_for
from ticker.feed.protocol import ist_isoformat, parse_frame
from ticker.registry.migrate import recreate_database

DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/ticker_bench_candles"
FIRST_SECOND = 1_795_000_000  # bench.ingest's frames: step n is stamped this + n


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def capture_batches(client, publisher: TickPublisher, batch: list[bytes]) -> list[list[bytes]]:
    """The bus batches the shard publishes for each frame, read back as the builder reads them."""
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(*keys.TICK_CHANNELS)
    time.sleep(0.2)
    out = []
    for frame in batch:
        publisher.publish(parse_frame(frame))
        messages, until = [], time.monotonic() + 0.2
        while time.monotonic() < until:  # None also stands for a subscribe confirmation: read on
            message = pubsub.get_message(timeout=0.02)
            if message is not None:
                messages.append(message["data"])
        out.append(messages)
    pubsub.close()
    return out


def shard_cpu_per_tick(publisher: TickPublisher, batch: list[bytes], seconds: float) -> float:
    ticks, cpu0, wall0 = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - wall0 < seconds:
        for frame in batch:
            ticks += publisher.publish(parse_frame(frame))
    return (time.process_time() - cpu0) / ticks


def restamp(steps: list[list[bytes]], round_: int) -> list[list[bytes]]:
    """The captured batches as the `round_`th run of them in a continuous session: step n of
    round r is the second FIRST_SECOND + r * len(steps) + n (exchange_timestamp in full mode,
    ingest_ts, which places quote-mode ticks), with each token's volume growing on."""
    out = []
    for step, messages in enumerate(steps):
        elapsed = round_ * len(steps) + step
        second = FIRST_SECOND + elapsed
        restamped = []
        for message in messages:
            ticks = [decode(encoded) for _, encoded in unpack(message)]
            for tick in ticks:
                tick["ingest_ts"] = second * 1000
                tick["volume_traded"] = 100_000 + elapsed * 13  # bench.ingest's frames: 13 a step
                if "exchange_timestamp" in tick:
                    tick["exchange_timestamp"] = ist_isoformat(second)
            restamped.append(pack(ticks, encode_all(ticks)))
        out.append(restamped)
    return out


def builder_cpu_per_tick(client, engine, steps: list[list[bytes]], seconds: float, intervals) -> tuple[float, int]:
    """CPU seconds per tick of fold + flush + PostgreSQL writes, and the candles closed. Each
    round replays the frames as the session's next seconds (restamped outside the timing), one
    flush per frame (a second); the timing covers only the builder's calls."""
    service = CandleService(client, engine, 3.0, intervals)
    ticks, cpu, round_ = 0, 0.0, 0
    while cpu < seconds:
        batches = restamp(steps, round_)
        started = time.process_time()
        for step, messages in enumerate(batches):
            now = FIRST_SECOND + round_ * len(batches) + step + 0.5
            for message in messages:
                ticks += service.fold(message, now)
            service.flush(now)
        service._write_pending()
        cpu += time.process_time() - started
        round_ += 1
    return cpu / ticks, service.builder.candles_closed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--packets", type=int, default=500, help="packets per Kite frame")
    args = parser.parse_args()
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="bench-candles-")
    server = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
                               "--dir", workdir], stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        client = redis_client(f"redis://127.0.0.1:{port}/0")
        engine = engine_for(recreate_database(DATABASE_URL))
        print(f"machine: {describe()} (shared with other work: figures vary run to run)")
        print(f"frames of {args.packets} packets, {args.seconds:.0f} s per figure\n")
        print(f"{'mode':6} {'path':52} {'µs CPU/tick':>12} {'vs shard':>9}")
        for mode in ("quote", "full"):
            client.set(LEASE, "bench:1")
            publisher = TickPublisher(client, LEASE, "bench:1")
            batch = frames(mode, args.packets)
            shard = shard_cpu_per_tick(publisher, batch, args.seconds)
            print(f"{mode:6} {'shard: parse + publish':52} {shard * 1e6:12.2f} {'':>9}")
            steps = capture_batches(client, publisher, batch)
            for label, intervals in (("builder: all 5 intervals (fold, flush, PostgreSQL)", INTERVALS),
                                     ("builder: 4 intervals, no `second`", [i for i in INTERVALS if i != "second"]),
                                     ("builder: minute only", ["minute"])):
                cost, closed = builder_cpu_per_tick(client, engine, steps, args.seconds, intervals)
                print(f"{mode:6} {label:52} {cost * 1e6:12.2f} {cost / shard:8.0%}   ({closed:,} candles closed)")
    finally:
        server.terminate()
        server.wait(5)


if __name__ == "__main__":
    main()
