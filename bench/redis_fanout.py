"""Redis's CPU for the tick path: the shard's fenced publish, and each subscribing replica.

    .venv/bin/python -m bench.redis_fanout [--subscribers 0,2,8,16] [--ticks 640,2560] [--rate 10]
        [--seconds 4]

A Redis server of the benchmark's own, pinned to core 0; on core 1, the shard's own publisher
(`TickPublisher.publish`: one fenced Lua call per Kite frame that publishes a batch per tick
bucket and keeps each token's snapshot) sends `--rate` frames a second of `--ticks` quote ticks
each, and S subscribers stand in for web replicas: each is a raw connection subscribed to all 64
tick channels (a replica with more than a few hundred clients wants every bucket), reading and
discarding what arrives. Redis's CPU is `INFO cpu` (user + system) over `--seconds`.

For each frame size, Redis's CPU per frame against S is a line: its value at S = 0 is the ingest
cost (per tick published), its slope the cost of one more subscriber (per batch message and per
KiB written). The two frame sizes separate the per-message from the per-KiB part. Each
subscriber's bytes are counted to check it received everything (a subscriber that falls behind
more than Redis's pub/sub output buffer limit is disconnected, and would make Redis look cheap).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.support.processes import Process, free_port, port_open, wait_for


def resp(*parts: str) -> bytes:
    out = [f"*{len(parts)}\r\n".encode()]
    for part in parts:
        data = part.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class Subscriber(threading.Thread):
    """A raw connection subscribed to `channels`, counting the bytes it reads."""

    def __init__(self, port: int, channels: list[str]):
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.sendall(resp("SUBSCRIBE", *channels))
        self.bytes = 0
        self.closed = False
        self.start()

    def run(self) -> None:
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except OSError:
                data = b""
            if not data:
                self.closed = True
                return
            self.bytes += len(data)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # ends the reader's recv, and tells Redis now
        except OSError:
            pass
        self.join(5)
        self.sock.close()


def redis_cpu(client) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def measure(client, port: int, publisher, frames: list[list[dict]], subscribers: int, rate: float,
            seconds: float) -> dict:
    from ticker.bus import keys

    subs = [Subscriber(port, list(keys.TICK_CHANNELS)) for _ in range(subscribers)]
    wait_for(lambda: client.pubsub_numsub(keys.TICK_CHANNELS[-1])[0][1] == subscribers, 10, "the subscribers")
    for frame in frames[:3]:  # warm up: scripts loaded, buffers grown
        publisher.publish([dict(t) for t in frame])
    time.sleep(0.3)
    read0 = [s.bytes for s in subs]
    cpu0, start = redis_cpu(client), time.monotonic()
    sent = 0
    while time.monotonic() - start < seconds:
        publisher.publish([dict(t) for t in frames[sent % len(frames)]])
        sent += 1
        pause = start + sent / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    wall = time.monotonic() - start
    time.sleep(0.5)  # what is in flight arrives
    cpu = redis_cpu(client) - cpu0
    received = [s.bytes - r for s, r in zip(subs, read0, strict=True)]
    closed = sum(s.closed for s in subs)
    for s in subs:
        s.close()
    ticks = sent * len(frames[0])
    return {"subscribers": subscribers, "ticks_per_frame": len(frames[0]), "frames": sent, "secs": wall,
            "ticks": ticks, "redis_cpu_secs": cpu, "redis_us_per_frame": cpu / sent * 1e6,
            "mib_per_subscriber": (sum(received) / len(received) / 2**20) if received else 0.0,
            "subscribers_dropped": closed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", default="0,2,8,16")
    parser.add_argument("--ticks", default="640,2560", help="quote ticks per Kite frame, one or more sizes")
    parser.add_argument("--rate", type=float, default=10.0, help="frames per second")
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="redis-fanout-"))
    port = free_port()
    server = Process("redis", ["taskset", "-c", "0", "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no", "--dir", str(workdir)], {}, workdir)
    os.environ["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    os.sched_setaffinity(0, {1})
    try:
        wait_for(lambda: port_open(port), 10, "redis")
        from bench.ingest import market_tick
        from bench.machine import describe
        from ticker.bus.connection import redis_client
        from ticker.bus.publisher import TickPublisher
        from ticker.feed.protocol import NSE, encode_frame, encode_packet, parse_frame

        print(describe(), "; Redis pinned to core 0, publisher and subscribers to core 1", flush=True)
        client = redis_client(os.environ["REDIS_URL"])
        client.set("bench:lease", "bench:1")
        publisher = TickPublisher(client, "bench:lease", "bench:1")
        results = []
        for size in [int(n) for n in args.ticks.split(",")]:
            tokens = [(n << 8) | NSE for n in range(1000, 1000 + size)]
            frames = [parse_frame(encode_frame([encode_packet(market_tick(t, s), "quote") for t in tokens]))
                      for s in range(10)]
            for subscribers in [int(n) for n in args.subscribers.split(",")]:
                result = measure(client, port, publisher, frames, subscribers, args.rate, args.seconds)
                print(result, flush=True)
                results.append(result)
        print()
        print(report(results))
    finally:
        server.stop()


def report(results: list[dict]) -> str:
    """A line per frame size: Redis µs per frame = ingest + S × per-subscriber, least squares."""
    lines = ["| ticks per frame | subscribers | Redis µs per frame | MiB per subscriber | dropped |",
             "| ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['ticks_per_frame']:,} | {r['subscribers']} | {r['redis_us_per_frame']:,.0f} "
              f"| {r['mib_per_subscriber']:.1f} | {r['subscribers_dropped']} |" for r in results]
    lines.append("")
    for size in sorted({r["ticks_per_frame"] for r in results}):
        rows = [r for r in results if r["ticks_per_frame"] == size]
        xs, ys = [r["subscribers"] for r in rows], [r["redis_us_per_frame"] for r in rows]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
        intercept = my - slope * mx
        kib = rows[-1]["mib_per_subscriber"] * 1024 / rows[-1]["frames"] if rows[-1]["subscribers"] else 0
        lines.append(f"- {size:,} ticks per frame: ingest {intercept / size:.2f} µs per tick; each subscriber "
                     f"{slope:.0f} µs per frame ({slope / size:.3f} µs per tick, {kib:.0f} KiB per frame in 64 "
                     f"messages)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
