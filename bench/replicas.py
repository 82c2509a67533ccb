"""Replicas on one host: the same load on one web replica and on two (`python -m ticker.replicas`).

    .venv/bin/python -m bench.replicas [--runs 1:10x50,1:1000x5,1:500x40,1:1000x20,2:1000x20,2:2000x20]
        [--fit 3]
        [--tokens 500] [--seconds 10] [--warmup 3] [--write]

Starts a Redis server of its own (so its CPU is this benchmark's alone), the simulator, a Celery
worker running the shard and beat (bench/fanout.py's `Bench`), then for each run `N:CLIENTSxTOKENS`
the launcher with WEB_CONCURRENCY=N (each replica pinned to a core of its own: replica i on core
i) and the load generator (bench/fanout_load.mjs, one Node process) pinned to core 1. The load
generator connects client i straight to replica i mod N, as nginx's ip_hash spreads many client
addresses (one address here would all land on one replica); the proxy's own cost is not measured.
Client i subscribes, in quote mode, to TOKENS consecutive instruments from i × TOKENS (wrapping).

On two cores, the replicas, the load generator, the simulator, the shard and Redis share the
machine: CPU is counted per process (user + system from /proc, Redis's from `INFO cpu`), and the
figures compare CPU per unit of work, not wall-clock capacity at saturation.

Figures per run, over `--seconds` after `--warmup`: deliveries (a tick reaching a client) and
frames per second, each replica's CPU-seconds, deliveries per replica CPU-second, the load
generator's and Redis's CPU-seconds, latency (shard ingest to receipt), conflated and dropped.
Then the capacity model (ticker/capacity.py) is fitted to the first `--fit` runs (replica CPU per
tick read from Redis, per frame and per delivery: they need loads of different shapes) and its
prediction for every run is printed beside the measurement.
`--write` puts the figures into BENCHMARKS.md ("Replicas on one host").
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tests.support.processes import Process, free_port, start_redis, wait_for

SECTION = "## Replicas on one host"
LOAD_CORE = "1"


def runs(text: str) -> list[tuple[int, int, int]]:
    """`1:500x10,2:1000x20` → [(replicas, clients, tokens per client), ...]."""
    out = []
    for item in text.split(","):
        replicas, size = item.split(":")
        clients, per_client = size.split("x")
        out.append((int(replicas), int(clients), int(per_client)))
    return out


def redis_cpu(client) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def start_replicas(bench, count: int, run_id: int) -> tuple[Process, list[tuple[int, str]]]:
    """The launcher with `count` replicas; returns it and each replica's (pid, url) once ready."""
    import requests

    base = free_port()
    while any(not _free(base + i) for i in range(count)):
        base = free_port()
    env = {**bench.env, "PORT": str(base), "WEB_CONCURRENCY": str(count), "WEB_PIN_CORES": "on",
           "LOG_LEVEL": "INFO", "ASYNC_MODE": "gevent"}
    launcher = bench.start(f"replicas-{run_id}", [sys.executable, "-m", "ticker.replicas"], env)
    urls = [f"http://127.0.0.1:{base + i}" for i in range(count)]

    def ready(url: str) -> bool:
        try:
            return requests.get(f"{url}/health", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    wait_for(lambda: all(ready(u) for u in urls) or not launcher.alive(), 90, f"{count} replicas to be healthy")
    pids = {int(i): int(pid) for i, pid in re.findall(r"replica (\d+) started: pid (\d+)", launcher.output())}
    return launcher, [(pids[i], urls[i]) for i in range(count)]


def _free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def one_run(bench, redis, run_id: int, replicas: int, clients: int, per_client: int) -> dict:
    import requests

    from bench.fanout import cpu_secs, pinned

    launcher, members = start_replicas(bench, replicas, run_id)
    tokens = bench.tokens
    jobs = [{"jwt": jwt, "url": members[i % replicas][1],
             "tokens": [tokens[(i * per_client + j) % len(tokens)] for j in range(per_client)]}
            for i, jwt in enumerate(bench.jwts(clients))]
    admin = bench.jwts(1, admin=True)[0]
    marks: dict[str, dict] = {}

    def mark(message: dict) -> None:
        if message["event"] in ("start", "end"):
            stats = requests.get(f"{members[0][1]}/ws/stats", headers={"Authorization": f"Bearer {admin}"},
                                 timeout=10).json()
            marks[message["event"]] = {
                "replica_cpu": [cpu_secs(pid) for pid, _ in members], "load_cpu": cpu_secs(bench.load_pid),
                "redis_cpu": redis_cpu(redis),
                "conflated": sum(r["ticks_conflated"] for r in stats["replicas"]),
                "dropped": sum(r["ticks_dropped"] for r in stats["replicas"]),
            }

    try:
        end = load(bench, {"url": members[0][1], "clients": jobs, "mode": "stream", "warmup": bench.args.warmup,
                           "seconds": bench.args.seconds, "concurrency": 50}, mark, pinned)
    finally:
        bench.stop(launcher)
    if end["event"] == "failed":
        raise RuntimeError(end["error"])
    before, after = marks["start"], marks["end"]
    replica_cpu = [b - a for a, b in zip(before["replica_cpu"], after["replica_cpu"], strict=True)]
    return {
        "replicas": replicas, "clients": clients, "per_client": per_client, "secs": end["secs"],
        "ticks_per_sec": len(bench.tokens) * bench.args.tick_rate,
        "deliveries": end["deliveries"], "frames": end["frames"],
        "deliveries_per_sec": end["deliveries"] / end["secs"], "frames_per_sec": end["frames"] / end["secs"],
        "replica_cpu_secs": replica_cpu, "deliveries_per_replica_cpu_sec": end["deliveries"] / sum(replica_cpu),
        "load_cpu_secs": after["load_cpu"] - before["load_cpu"],
        "redis_cpu_secs": after["redis_cpu"] - before["redis_cpu"],
        "p50_ms": end["p50_ms"], "p99_ms": end["p99_ms"], "max_ms": end["max_ms"],
        "conflated": after["conflated"] - before["conflated"], "dropped": after["dropped"] - before["dropped"],
        "disconnects": end["disconnects"],
    }


def load(bench, job: dict, on_line, pinned) -> dict:
    """bench.fanout's `Bench.load`, also keeping the load generator's pid for its CPU."""
    from bench.fanout import ROOT, follow_load

    path = bench.workdir / "job.json"
    path.write_text(json.dumps(job))
    process = bench.start(f"load-{time.monotonic_ns()}",
                          pinned(LOAD_CORE, ["node", str(ROOT / "bench" / "fanout_load.mjs"), str(path)]))
    bench.load_pid = process.pid
    try:
        return follow_load(process, on_line, time.monotonic() + job["warmup"] + job["seconds"] + 300)
    finally:
        bench.stop(process)


def table(results: list[dict]) -> str:
    lines = [
        "| replicas | clients × tokens | deliveries/s | frames/s | CPU-s per replica | deliveries per replica CPU-s "
        "| load generator CPU-s | Redis CPU-s | p50 / p99 / max ms | conflated | dropped |",
        "| ---: | --- | ---: | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r['replicas']} | {r['clients']:,} × {r['per_client']} | {r['deliveries_per_sec']:,.0f} "
            f"| {r['frames_per_sec']:,.0f} | {' + '.join(f'{c:.2f}' for c in r['replica_cpu_secs'])} "
            f"| {r['deliveries_per_replica_cpu_sec']:,.0f} | {r['load_cpu_secs']:.2f} | {r['redis_cpu_secs']:.2f} "
            f"| {r['p50_ms']:.0f} / {r['p99_ms']:.0f} / {r['max_ms']:.0f} | {r['conflated']:,} | {r['dropped']:,} |")
    return "\n".join(lines)


def model_check(results: list[dict], fit: int) -> tuple[str, object]:
    """Fit replica CPU = r × ticks read + a × frames + b × deliveries to the first `fit` runs;
    predict every run."""
    from ticker.capacity import fit_replica_cost

    cost = fit_replica_cost([sample(r) for r in results[:fit]])
    lines = [f"The capacity model (ticker/capacity.py), fitted to the first {fit} runs: {cost.read_us:.1f} µs "
             f"of replica CPU per tick read from Redis, {cost.frame_us:.1f} µs per frame and {cost.delivery_us:.2f} "
             "µs per delivery; its prediction for each run (the others out of sample):", "",
             "| replicas | clients × tokens | predicted replica CPU-s | measured | error |",
             "| ---: | --- | ---: | ---: | ---: |"]
    for r in results:
        predicted = cost.cpu_secs(*sample(r)[:3])
        measured = sum(r["replica_cpu_secs"])
        lines.append(f"| {r['replicas']} | {r['clients']:,} × {r['per_client']} | {predicted:.2f} | {measured:.2f} "
                     f"| {100 * (predicted - measured) / measured:+.0f}% |")
    return "\n".join(lines), cost


def sample(r: dict) -> tuple[float, float, float, float]:
    """(ticks read, frames, deliveries, CPU-seconds) of a run: every replica reads every tick
    (each one's clients want every token)."""
    return (r["replicas"] * r["ticks_per_sec"] * r["secs"], r["frames"], r["deliveries"], sum(r["replica_cpu_secs"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=runs, default=runs("1:10x50,1:1000x5,1:500x40,1:1000x20,2:1000x20,2:2000x20"),
                        help="REPLICAS:CLIENTSxTOKENS,...")
    parser.add_argument("--fit", type=int, default=3, help="fit the model to this many first runs")
    parser.add_argument("--tokens", type=int, default=500, help="instruments ticking")
    parser.add_argument("--tick-rate", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="replicas-bench-"))
    redis_port = free_port()
    redis_process = start_redis(redis_port, workdir, "bench-redis")
    os.environ["FANOUT_BENCH_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    os.environ.setdefault("FANOUT_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/ticker_bench_replicas")
    from bench.fanout import Bench, write_section  # reads the URLs above when imported
    from bench.machine import describe
    from ticker.bus.connection import redis_client

    machine = describe()
    print(machine, flush=True)
    bench = Bench(args, workdir)
    bench.env["MAX_CONNECTIONS_PER_USER"] = "100000"
    redis = redis_client(os.environ["FANOUT_BENCH_REDIS_URL"])
    results = []
    try:
        bench.bring_up()
        for n, (replicas, clients, per_client) in enumerate(args.runs):
            result = one_run(bench, redis, n, replicas, clients, per_client)
            print(json.dumps(result), flush=True)
            results.append(result)
    except BaseException:
        print(f"failed: the processes' logs are in {workdir}", flush=True)
        raise
    finally:
        bench.stop_all()
        redis_process.stop()
    shutil.rmtree(workdir)
    check, _ = model_check(results, args.fit)
    command = "python -m bench.replicas " + " ".join(sys.argv[1:])
    body = "\n".join([
        f"`.venv/bin/{command.strip()}` (`make bench-replicas`); {machine}.",
        "",
        f"{args.tokens} NSE instruments tick {args.tick_rate:g} times a second each (bench/fanout.py's simulator, "
        "shard and beat); Redis is a server of the benchmark's own. Each run starts `python -m ticker.replicas` "
        "with WEB_CONCURRENCY replicas, replica i pinned to core i, and the socket.io-client load generator "
        "pinned to core 1, connecting client i straight to replica i mod N (as ip_hash spreads many client "
        "addresses; nginx's own cost is not in these figures). "
        f"{args.warmup:g} s warm-up, then {args.seconds:g} s measured. CPU-seconds are each process's user + "
        "system time over the window; with two replicas, replica 1 shares core 1 with the load generator, "
        "so its CPU-seconds, not wall time, are the measure.",
        "",
        table(results),
        "",
        check,
    ])
    print(body)
    if args.write:
        write_section(body, SECTION)


if __name__ == "__main__":
    main()
