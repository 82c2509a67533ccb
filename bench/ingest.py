"""Ingest benchmark: how many ticks one shard process parses and publishes per second.

    .venv/bin/python -m bench.ingest [--seconds 5] [--packets 500]

Frames are built as Kite sends them (many packets per frame) and fed to the shard's own code
path: `parse_frame`, then `TickPublisher.publish` (stamping, encoding, one fenced Lua call per
frame into the real Redis). It compares publishing each tick on its own (a PUBLISH and an
HSET per tick, pipelined per frame, and unpipelined), and reports the parsers alone with
`KiteTicker._parse_binary` for reference. CPU time is the process's own (`time.process_time`),
so the figure is per core; Redis runs on the other core.
"""

from __future__ import annotations

import argparse
import time

from kiteconnect import KiteTicker

from bench.machine import describe
from ticker.bus import keys
from ticker.bus.connection import redis_client
from ticker.bus.publisher import TickPublisher
from ticker.bus.ticks import encode
from ticker.feed.protocol import NSE, encode_frame, encode_packet, parse_frame

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--packets", type=int, default=500, help="packets per Kite frame")
    args = parser.parse_args()
    client = redis_client(REDIS_URL)
    client.flushdb()
    client.set(LEASE, "bench:1")
    oracle = KiteTicker("k", "t")
    publisher = TickPublisher(client, LEASE, "bench:1")
    print(f"machine: {describe()}")
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
    client.flushdb()


if __name__ == "__main__":
    main()
