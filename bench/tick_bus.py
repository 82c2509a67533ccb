"""Tick bus benchmark: one Redis against a 3-master Redis Cluster, the same load.

    .venv/bin/python -m bench.tick_bus [--seconds 5] [--packets 500] [--listeners 1]

For each bus it starts its own servers (one `redis-server`; or three cluster masters, no
replicas), then runs, at the same time and for `--seconds`:
- one publisher (this process): Kite-shaped quote frames of `--packets` packets over as many
  tokens (spread over the 64 buckets) fed to the shard's own path, `parse_frame` then
  `TickPublisher.publish` (one Redis) or `ShardedTickPublisher.publish` (cluster), at `--rate`
  ticks per second (the same load on both; 0 for as fast as it goes);
- `--listeners` web replicas' tick listeners (`TickListener` or `ShardedTickListener`), each a
  process of its own subscribed to every bucket, handing each batch to a delivery that only
  counts its ticks (the Socket.IO delivery behind it is the same code on either bus).

It prints ticks published per publisher CPU-second, ticks received per listener CPU-second,
and what each server carried: commands, pub/sub messages (PUBLISH/SPUBLISH calls) and CPU
seconds (INFO). Every process shares the machine's cores: say how many when quoting figures.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import threading
import time
from pathlib import Path

import redis

from bench.ingest import frames
from bench.machine import describe
from tests.support.cluster import LocalCluster
from tests.support.processes import free_port, start_redis, stop_all

SLOT = "bench:0"


def server_stats(port: int) -> dict[str, float]:
    client = redis.Redis(port=port, decode_responses=True)
    cpu, commands = client.info("cpu"), client.info("commandstats")
    published = sum(commands.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("publish", "spublish"))
    return {"cpu": cpu["used_cpu_user"] + cpu["used_cpu_sys"], "published": published,
            "commands": client.info("stats")["total_commands_processed"]}


def listen(redis_url: str, tick_bus_url: str, seconds: float, ready, results) -> None:
    """A web replica's tick listener, counting what it receives (a process of its own)."""
    os.environ.update(REDIS_URL=redis_url, TICK_BUS_URL=tick_bus_url, TICKER_CHANNEL_NAMESPACE="bench")
    from ticker.bus import keys
    from ticker.bus.connection import redis_client, tick_bus_client
    from ticker.web.listener import TickListener
    from ticker.web.sharded_listener import ShardedTickListener

    counted, deliveries, waiting = [0], [0], [False]

    def deliver(batch) -> None:
        counted[0] += len(batch)
        waiting[0] = True

    def flush() -> bool:  # one flush with ticks is one `ticks` frame per subscribed client
        deliveries[0] += waiting[0]
        waiting[0] = False
        return False

    args = ("bench:wake", lambda: set(range(keys.TICK_BUCKETS)), deliver, flush, lambda *_: None)
    control = redis_client(redis_url)
    listener = (ShardedTickListener(control, tick_bus_client(tick_bus_url), *args) if tick_bus_url
                else TickListener(control, *args))
    threading.Thread(target=listener.run_forever, daemon=True).start()
    while not (listener.live >= set(range(keys.TICK_BUCKETS))):
        time.sleep(0.05)
    ready.set()
    start_cpu, start_count, start_deliveries = time.process_time(), counted[0], deliveries[0]
    time.sleep(seconds)
    results.put((counted[0] - start_count, time.process_time() - start_cpu, deliveries[0] - start_deliveries))


def run(bus: str, args, workdir: Path) -> dict:
    os.environ["TICKER_CHANNEL_NAMESPACE"] = "bench"
    from ticker.bus import keys
    from ticker.bus.connection import redis_client, tick_bus_client
    from ticker.bus.lease import ShardLease
    from ticker.bus.publisher import TickPublisher
    from ticker.bus.sharded import ShardedTickPublisher
    from ticker.feed.protocol import parse_frame

    workdir.mkdir(parents=True, exist_ok=True)
    main_port = free_port()
    servers = [start_redis(main_port, workdir, f"{bus}-main")]
    cluster = None
    try:
        redis_url = f"redis://127.0.0.1:{main_port}/0"
        if bus == "cluster":
            cluster = LocalCluster(workdir / "cluster", masters=3, replicas=0).start()
            tick_bus_url, ports = cluster.url, cluster.ports
        else:
            tick_bus_url, ports = "", [main_port]
        client = redis_client(redis_url)
        lease = ShardLease(client, SLOT, "bench")
        assert lease.acquire()
        publisher = (ShardedTickPublisher(client, tick_bus_client(tick_bus_url), lease) if cluster
                     else TickPublisher(client, keys.shard_lease(SLOT), lease.value))
        ready, results = multiprocessing.Event(), multiprocessing.Queue()
        listen_args = (redis_url, tick_bus_url, args.seconds, ready, results)
        listeners = [multiprocessing.Process(target=listen, args=listen_args) for _ in range(args.listeners)]
        for process in listeners:
            process.start()
        ready.wait(30)
        batch = frames("quote", args.packets)
        before = {port: server_stats(port) for port in ports}
        published, cpu0, wall0 = 0, time.process_time(), time.perf_counter()
        interval = args.packets / args.rate if args.rate else 0.0  # seconds per frame at the rate asked
        while time.perf_counter() - wall0 < args.seconds:
            for frame in batch:
                published += publisher.publish(parse_frame(frame))
                if lease.remaining() < 3:  # what the shard's loop does
                    lease.renew()
                if interval:
                    time.sleep(max(0.0, wall0 + (published / args.packets) * interval - time.perf_counter()))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        after = {port: server_stats(port) for port in ports}
        received = [results.get(timeout=30) for _ in listeners]
        for process in listeners:
            process.join(10)
        return {"published": published, "cpu": cpu, "wall": wall, "received": received,
                "servers": {port: {k: after[port][k] - before[port][k] for k in after[port]} for port in ports}}
    finally:
        if cluster is not None:
            cluster.stop()
        stop_all(servers)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--packets", type=int, default=500, help="packets (tokens) per Kite frame")
    parser.add_argument("--listeners", type=int, default=1, help="web replicas' listeners, one process each")
    parser.add_argument("--rate", type=float, default=10_000,
                        help="ticks/s the publisher offers (the same load on both buses); 0: as fast as it goes")
    args = parser.parse_args()
    print(f"machine: {describe()}")
    print(f"quote frames of {args.packets} packets, {args.seconds:g} s per bus, {args.listeners} listener(s), "
          f"{f'{args.rate:,.0f} ticks/s offered' if args.rate else 'the publisher as fast as it goes'}\n")
    with tempfile.TemporaryDirectory() as tmp:
        for bus in ("one Redis", "cluster"):
            figures = run("cluster" if bus == "cluster" else "single", args, Path(tmp) / bus.replace(" ", "-"))
            received = sum(n for n, _, _ in figures["received"])
            listener_cpu = sum(c for _, c, _ in figures["received"])
            deliveries = sum(d for _, _, d in figures["received"]) / args.listeners
            flushes = figures["published"] / args.packets
            print(f"{bus}: published {figures['published'] / figures['cpu']:,.0f} ticks per publisher CPU-s "
                  f"({figures['published'] / figures['wall']:,.0f}/s wall); received "
                  f"{received / max(listener_cpu, 1e-9):,.0f} ticks per listener CPU-s "
                  f"({1e6 * listener_cpu / max(received, 1):.2f} µs each) "
                  f"({received / args.listeners / args.seconds:,.0f}/s per listener); "
                  f"{deliveries / flushes:.2f} deliveries (frames per client) per shard flush")
            for port, stats in figures["servers"].items():
                print(f"  server :{port}: {stats['commands'] / figures['wall']:,.0f} commands/s, "
                      f"{stats['published'] / figures['wall']:,.0f} messages published/s, "
                      f"{stats['cpu'] / figures['wall']:.0%} of a core")


if __name__ == "__main__":
    main()
