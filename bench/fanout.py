"""Fan-out benchmark: one web replica delivering simulator ticks to N Socket.IO clients, against
the straightforward design in the same run.

    .venv/bin/python -m bench.fanout [--sizes 500x10,1000x20] [--tokens 500] [--tick-rate 2]
        [--seconds 20] [--warmup 5] [--modes gevent,eventlet] [--idle 10000] [--write]

Starts the simulator (every subscribed token ticks `--tick-rate` times a second), a Celery
worker running the shard and beat, then for each size and design a fresh web replica pinned
to core 0 (`taskset`), and the load generator (bench/fanout_load.mjs: socket.io-client
connections in one Node process) pinned to core 1. Client i subscribes, in quote mode, to
`tokens per client` consecutive tokens of the `--tokens` NSE instruments, starting at
i × tokens per client (wrapping), so every instrument has subscribers.

Designs:
- this service: the replica's tick listener reads each Redis batch once and sends each client
  one frame per flush (`ticker/web/fanout.py`), in each `--modes` async mode;
- straightforward: the replica's delivery off and a worker (bench/fanout_baseline.py) emitting
  every tick to its room through Flask-SocketIO's message queue; the replica runs the first mode,
  with the same transport as this service (no WebSocket compression);
- straightforward, library defaults: the same with permessage-deflate, which the WebSocket servers
  negotiate with every browser unless told not to (WS_COMPRESSION=on).

The load generator stamps a `ticks` frame on receipt and reads its ticks' `ingest_ts` by a
scan of the text, rather than JSON-parsing every client's frame one after another on its one
core (each real client parses only its own): parsing made it, not the replica, the slowest
step of a burst and counted its queue as latency.

Figures per run, over `--seconds` after `--warmup`: tick deliveries (one tick reaching one
client) per second and per web CPU-second (the replica's user+system time from /proc), frames
received, latency from shard ingest (`ingest_ts`) to client receipt (p50, p99, max), the
replica's conflated and dropped counts. `--idle N` also opens N idle connections to a fresh
replica in each mode and reports its resident memory growth per connection.

Uses Redis database 8 (FANOUT_BENCH_REDIS_URL: one nothing else uses, since it is flushed) and
the PostgreSQL database ticker_bench_fanout (FANOUT_BENCH_DATABASE_URL), both emptied first.
`--write` puts the figures into BENCHMARKS.md (its "Fan-out" section only).
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

REDIS_URL = os.environ.get("FANOUT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/8")
DATABASE_URL = os.environ.get("FANOUT_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/ticker_bench_fanout")
os.environ["REDIS_URL"] = REDIS_URL  # before ticker imports read the configuration
os.environ["DATABASE_URL"] = DATABASE_URL

import requests  # noqa: E402

from bench.machine import describe  # noqa: E402
from tests.support.processes import VENV_BIN, Process, free_port, port_open, wait_for  # noqa: E402
from ticker import create_app  # noqa: E402
from ticker.bus.connection import redis_client  # noqa: E402
from ticker.config import ROOT, Config  # noqa: E402
from ticker.registry.migrate import recreate_database  # noqa: E402
from ticker.web.auth import write_key_pair  # noqa: E402

SECTION = "## Fan-out"
DEFAULTS = "straightforward, library defaults"  # also permessage-deflate, as the WebSocket servers negotiate it
CLK_TCK = os.sysconf("SC_CLK_TCK")
WEB_CORE, LOAD_CORE = "0", "1"


class BenchConfig(Config):
    ENV = "test"
    LOG_LEVEL = "WARNING"
    REDIS_URL = REDIS_URL
    DATABASE_URL = DATABASE_URL


def cpu_secs(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def pinned(core: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", core, *argv] if os.cpu_count() and os.cpu_count() > 1 else argv


class Bench:
    """The shared part of every run: simulator, shard worker, beat, keys, tokens."""

    def __init__(self, args: argparse.Namespace, workdir: Path):
        self.args = args
        self.workdir = workdir
        self.started: list[Process] = []
        private, public = workdir / "jwt-private.pem", workdir / "jwt-public.pem"
        write_key_pair(private, public)
        self.sim_port = free_port()
        sim = f"127.0.0.1:{self.sim_port}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("KITE_", "JWT_", "WATCHLIST"))},
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1", "TICKER_ENV": "test",
            "WEB_HOST": "127.0.0.1", "LOG_LEVEL": "WARNING", "TICKER_INSTANCE_DIR": str(workdir),
            "REDIS_URL": REDIS_URL,
            "DATABASE_URL": DATABASE_URL, "KITE_API_ROOT": f"http://{sim}", "KITE_TICKER_ROOT": f"ws://{sim}",
            "KITE_LOGIN_ROOT": f"http://{sim}", "JWT_PUBLIC_KEY_FILE": str(public),
            "JWT_PRIVATE_KEY_FILE": str(private), "UNSUBSCRIBE_GRACE_SECS": "600",
            "MAX_CONNECTS_PER_ADDRESS_PER_SEC": "100000", "MAX_CONNECTIONS": "100000",
        }
        self.app = create_app(BenchConfig)
        self.app.config.update(JWT_PUBLIC_KEY=public.read_text(), JWT_PRIVATE_KEY=private.read_text(),
                               KITE_API_ROOT=f"http://{sim}")

    def start(self, name: str, argv: list[str], env: dict | None = None) -> Process:
        process = Process(name, argv, env or self.env, self.workdir)
        self.started.append(process)
        return process

    def stop(self, process: Process) -> None:
        process.stop()
        self.started.remove(process)

    def stop_all(self) -> None:
        for process in reversed(list(self.started)):
            self.stop(process)
        if getattr(self, "cluster", None) is not None:
            self.cluster.stop()

    def bring_up(self) -> None:
        from ticker.registry.loader import load_instruments

        if getattr(self.args, "tick_bus", "redis") == "cluster":  # ticks on a 3-master Redis Cluster (bench.tick_bus)
            from tests.support.cluster import LocalCluster

            self.cluster = LocalCluster(self.workdir / "cluster", masters=3, replicas=0).start()
            self.env["TICK_BUS_URL"] = self.cluster.url
        redis_client(REDIS_URL).flushdb()
        recreate_database(DATABASE_URL)
        sim = self.start("sim", [sys.executable, "-m", "ticker.sim", "--port", str(self.sim_port), "--seed", "7",
                                 "--tick-rate", str(self.args.tick_rate), "--sent-history", "1"])
        wait_for(lambda: port_open(self.sim_port) or not sim.alive(), 30, "the simulator")
        load_instruments(self.app)
        worker = self.start("worker", [str(VENV_BIN / "celery"), "-A", "tasks", "worker", "-Q", "shards,default",
                                       "-n", "bench-worker@%h", "--concurrency", "3", "--max-tasks-per-child", "1",
                                       "--without-gossip", "--without-mingle", "-l", "INFO"])
        self.start("beat", [str(VENV_BIN / "celery"), "-A", "tasks", "beat", "-s",
                            str(self.workdir / "beat-schedule"), "-l", "WARNING"])
        wait_for(lambda: "ready" in worker.output() or not worker.alive(), 60, "the Celery worker")
        self.tokens = self.nse_tokens(self.args.tokens)

    def nse_tokens(self, count: int) -> list[int]:
        from sqlalchemy import text

        from ticker.db import engine_for

        with engine_for(DATABASE_URL).connect() as connection:
            rows = connection.execute(text("SELECT instrument_token FROM instruments WHERE segment = 'NSE' "
                                           "ORDER BY 1 LIMIT :n"), {"n": count})
            return [token for (token,) in rows]

    def web(self, name: str, mode: str, **env: str) -> tuple[Process, str]:
        port = free_port()
        process = self.start(name, pinned(WEB_CORE, [sys.executable, "wsgi.py"]),
                             {**self.env, "PORT": str(port), "ASYNC_MODE": mode, **env})
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: port_open(port) or not process.alive(), 30, f"{name} to listen")
        health = lambda: requests.get(f"{url}/health", timeout=5)  # noqa: E731
        try:
            wait_for(lambda: health().status_code == 200, 60, f"{name} to be healthy")
        except AssertionError:
            print(health().text, flush=True)
            raise
        return process, url

    def jwts(self, count: int, admin: bool = False) -> list[str]:
        """Tokens shaped like `flask jwt mint`'s, signed with a key parsed once (parsing the PEM
        for each token, as minting one at a time does, costs tens of milliseconds)."""
        import jwt as pyjwt
        from cryptography.hazmat.primitives import serialization

        key = serialization.load_pem_private_key(self.app.config["JWT_PRIVATE_KEY"].encode(), password=None)
        now = int(time.time())
        return [pyjwt.encode({"sub": f"bench{i}", "iat": now, "nbf": now, "exp": now + 7200, "jti": f"bench-{i}",
                              "type": "access", "fresh": False, "admin": admin}, key, algorithm="RS256")
                for i in range(count)]

    def load(self, job: dict, on_line) -> dict:
        path = self.workdir / "job.json"
        path.write_text(json.dumps(job))
        self.loads = getattr(self, "loads", 0) + 1
        argv = ["node", str(ROOT / "bench" / "fanout_load.mjs"), str(path)]
        process = self.start(f"load-{self.loads}", pinned(LOAD_CORE, argv))
        message = follow_load(process, on_line, time.monotonic() + job["warmup"] + job["seconds"] + 600)
        self.stop(process)
        return message


def follow_load(process, on_line, deadline: float) -> dict:
    """Hand each JSON line the load generator prints to `on_line` until its `end` (or
    `failed`) line, which is returned. Raises RuntimeError when it exits first or `deadline`
    (monotonic) passes."""
    seen = 0
    while time.monotonic() < deadline:
        lines = process.output().splitlines()
        for line in lines[seen:]:
            if line.startswith("{"):
                message = json.loads(line)
                on_line(message)
                if message["event"] in ("end", "failed"):
                    return message
        seen = len(lines)
        if not process.alive():
            raise RuntimeError(f"load generator exited:\n{process.output()[-2000:]}")
        time.sleep(0.05)
    raise RuntimeError("load generator timed out")


def stream_run(bench: Bench, design: str, mode: str, clients: int, per_client: int) -> dict:
    baseline = design.startswith("straightforward")
    name = f"web-{design.replace(' ', '-').replace(',', '')}-{mode}-{clients}x{per_client}"
    web, url = bench.web(name, mode, WEB_TICK_DELIVERY="off" if baseline else "on",
                         WS_COMPRESSION="on" if design == DEFAULTS else "off")
    emitter = bench.start("baseline", [sys.executable, "-m", "bench.fanout_baseline"]) if baseline else None
    tokens = bench.tokens
    jobs = [{"jwt": jwt, "tokens": [tokens[(i * per_client + j) % len(tokens)] for j in range(per_client)]}
            for i, jwt in enumerate(bench.jwts(clients))]
    admin = bench.jwts(1, admin=True)[0]
    marks: dict[str, tuple[float, dict]] = {}

    def mark(message: dict) -> None:
        if message["event"] in ("start", "end"):
            stats = requests.get(f"{url}/ws/stats", headers={"Authorization": f"Bearer {admin}"}, timeout=10).json()
            mine = next(r for r in stats["replicas"] if r["replica"] == stats["answered_by"])
            marks[message["event"]] = (cpu_secs(web.pid), mine)

    try:
        end = bench.load({"url": url, "clients": jobs, "mode": "stream", "warmup": bench.args.warmup,
                          "seconds": bench.args.seconds, "concurrency": 50}, mark)
        if end["event"] == "failed":
            raise RuntimeError(end["error"])
        cpu = marks["end"][0] - marks["start"][0]
        before, after = marks["start"][1], marks["end"][1]
        return {
            "design": design, "mode": mode, "clients": clients, "per_client": per_client,
            "deliveries_per_sec": end["deliveries"] / end["secs"], "web_cpu_secs": cpu,
            "deliveries_per_cpu_sec": end["deliveries"] / cpu if cpu else float("inf"),
            "frames": end["frames"], "deliveries": end["deliveries"], "secs": end["secs"],
            "p50_ms": end["p50_ms"], "p99_ms": end["p99_ms"], "max_ms": end["max_ms"],
            "conflated": after["ticks_conflated"] - before["ticks_conflated"],
            "dropped": after["ticks_dropped"] - before["ticks_dropped"], "disconnects": end["disconnects"],
        }
    finally:
        if emitter is not None:
            bench.stop(emitter)
        bench.stop(web)


def idle_run(bench: Bench, mode: str, count: int) -> dict:
    web, url = bench.web(f"web-idle-{mode}", mode)
    time.sleep(1.0)
    before = rss_kib(web.pid)
    after = {}

    def measure(message: dict) -> None:
        if message["event"] == "ready":
            print(f"{count} idle connections to {mode} opened in {message['secs']:.1f}s", flush=True)
            time.sleep(3.0)  # let the connections settle
            after["rss"] = rss_kib(web.pid)

    try:
        end = bench.load({"url": url, "clients": [{"jwt": jwt, "tokens": []} for jwt in bench.jwts(count)],
                          "mode": "idle", "warmup": 0, "seconds": 8, "concurrency": 100}, measure)
        if end["event"] == "failed":
            raise RuntimeError(end["error"])
    finally:
        bench.stop(web)
    return {"mode": mode, "connections": count, "rss_before_mib": before / 1024,
            "kib_per_connection": (after["rss"] - before) / count}


def table(streams: list[dict], idles: list[dict]) -> str:
    lines = [
        "| design | async mode | clients × tokens | deliveries/s | deliveries per web CPU-s | web CPU-s "
        "| frames | ticks/frame | p50 ms | p99 ms | max ms | conflated | dropped |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in streams:
        lines.append(
            f"| {r['design']} | {r['mode']} | {r['clients']} × {r['per_client']} | {r['deliveries_per_sec']:,.0f} "
            f"| {r['deliveries_per_cpu_sec']:,.0f} | {r['web_cpu_secs']:.1f} | {r['frames']:,} "
            f"| {r['deliveries'] / max(1, r['frames']):.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} "
            f"| {r['max_ms']:.0f} | {r['conflated']:,} | {r['dropped']:,} |")
    if idles:
        lines += ["", "| async mode | idle connections | replica RSS before (MiB) | KiB per connection |",
                  "| --- | ---: | ---: | ---: |"]
        lines += [f"| {r['mode']} | {r['connections']:,} | {r['rss_before_mib']:.0f} | {r['kib_per_connection']:.1f} |"
                  for r in idles]
    return "\n".join(lines)


def ratios(streams: list[dict]) -> list[str]:
    notes = []
    for size in sorted({(r["clients"], r["per_client"]) for r in streams}):
        runs = [r for r in streams if (r["clients"], r["per_client"]) == size]
        for base in [r for r in runs if r["design"].startswith("straightforward")]:
            for r in [r for r in runs if r["design"] == "this service"]:
                notes.append(f"- {size[0]} × {size[1]}, {r['mode']}: "
                             f"{r['deliveries_per_cpu_sec'] / base['deliveries_per_cpu_sec']:.1f}× the deliveries per "
                             f"web CPU-second of {base['design']}.")
    return notes


def write_section(body: str, heading: str = SECTION) -> None:
    """Replace the section under `heading` in BENCHMARKS.md with `body` (or add it at the end)."""
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    section = f"{heading}\n\n{body.strip()}\n\n"
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    path.write_text(text.rstrip() + "\n")


def sizes(text: str) -> list[tuple[int, int]]:
    return [tuple(int(n) for n in size.split("x")) for size in text.split(",") if size]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=sizes, default=sizes("500x10,1000x20"), help="CLIENTSxTOKENS,...")
    parser.add_argument("--tokens", type=int, default=500, help="instruments ticking")
    parser.add_argument("--tick-rate", type=float, default=2.0, help="ticks per second per instrument")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window per run")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--modes", default="gevent,eventlet", help="async modes of this service's runs")
    parser.add_argument("--designs", default="this,straightforward,defaults",
                        help="which designs to run: this, straightforward, defaults")
    parser.add_argument("--idle", type=int, default=10_000, help="idle connections for the memory figure (0: skip)")
    parser.add_argument("--tick-bus", choices=("redis", "cluster"), default="redis",
                        help="where ticks travel: the one Redis, or a 3-master Redis Cluster started for the run "
                             "(TICK_BUS_URL); compare `--designs this` runs of each")
    parser.add_argument("--write", action="store_true", help="write the figures into BENCHMARKS.md")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    machine = describe()
    command = "python -m bench.fanout " + " ".join(sys.argv[1:])
    print(machine, flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="fanout-bench-"))
    bench = Bench(args, workdir)
    streams, idles = [], []
    try:
        bench.bring_up()
        for clients, per_client in args.sizes:
            wanted = set(args.designs.split(","))
            designs = ([("this service", m) for m in modes] * ("this" in wanted)
                       + [("straightforward", modes[0])] * ("straightforward" in wanted)
                       + [(DEFAULTS, modes[0])] * ("defaults" in wanted))
            for design, mode in designs:
                result = stream_run(bench, design, mode, clients, per_client)
                print(json.dumps(result), flush=True)
                streams.append(result)
        for mode in modes if args.idle else []:
            result = idle_run(bench, mode, args.idle)
            print(json.dumps(result), flush=True)
            idles.append(result)
    except BaseException:
        print(f"failed: the processes' logs are in {workdir}", flush=True)
        raise
    finally:
        bench.stop_all()
    shutil.rmtree(workdir)
    body = "\n".join([
        f"`.venv/bin/{command.strip()}` (`make bench-fanout`); {machine}.",
        "",
        f"{args.tokens} NSE instruments tick {args.tick_rate:g} times a second each, all in the same instant (the "
        "simulator steps every instrument at once and sends one frame per Kite connection, so each step is a "
        "burst); one web replica pinned to core 0, the socket.io-client load generator (one Node process) pinned "
        f"to core 1; {args.warmup:g} s warm-up, then {args.seconds:g} s measured. Latency is shard ingest "
        "(`ingest_ts`, stamped when the shard publishes) to the load generator's receipt of the frame, before it "
        "parses it (one Node process stands in for hundreds of clients, each of which would parse only its own "
        "frames).",
        "",
        table(streams, idles),
        "",
        *ratios(streams),
    ])
    print(body)
    if args.write:
        write_section(body)


if __name__ == "__main__":
    main()
