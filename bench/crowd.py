"""Crowd benchmark: N clients connecting and subscribing to one web replica in the same second,
as after a replica restart, a deploy or the market open.

    .venv/bin/python -m bench.crowd [--clients 1000] [--per-client 3] [--tokens 300] [--modes gevent,eventlet]
        [--write]

Starts the simulator, a Celery worker running the shard and beat (bench/fanout.py's `Bench`, on
its Redis database and PostgreSQL database: the two benchmarks cannot run at once), then for each
async mode a fresh web replica pinned to core 0 and the load generator (bench/crowd_load.mjs:
socket.io-client connections in one Node process) pinned to core 1. The load generator opens
every connection at the same moment, with no pacing and no retries; each client subscribes to
`--per-client` of the `--tokens` NSE instruments as soon as it is connected, and counts every
refusal, error and rejection it gets.

Figures per mode: connections refused and errors by code (target: none), and the time from the
start until each client was connected, subscribed and received its first tick (p50, p99, max).
Target (issue "A trading day without surprises"): 1,000 clients, 0 `internal_error`, every one
subscribed and receiving within 10 s. `--write` puts the figures into BENCHMARKS.md (its
"Crowd" section only).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench.fanout import LOAD_CORE, ROOT, Bench, pinned, write_section
from bench.machine import describe

SECTION = "## Crowd: clients arriving at once"


def crowd_run(bench: Bench, mode: str, clients: int, per_client: int) -> dict:
    process, url = bench.web(f"web-crowd-{mode}", mode)
    tokens = bench.tokens
    jwts = bench.jwts(clients)
    job = {"url": url, "mode": "quote", "settle": 60,
           "clients": [{"jwt": jwt, "tokens": [tokens[(i * per_client + k) % len(tokens)] for k in range(per_client)]}
                       for i, jwt in enumerate(jwts)]}
    path = bench.workdir / f"crowd-{mode}.json"
    path.write_text(json.dumps(job))
    load = bench.start(f"crowd-load-{mode}", pinned(LOAD_CORE, ["node", str(ROOT / "bench" / "crowd_load.mjs"),
                                                                 str(path)]))
    deadline = time.monotonic() + 120
    while load.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    lines = [line for line in load.output().splitlines() if line.startswith('{"event":"end"')]
    bench.stop(load)
    bench.stop(process)
    if not lines:
        raise RuntimeError(f"the crowd load generator gave no figures:\n{load.output()[-2000:]}")
    return {"mode": mode, **json.loads(lines[-1])}


def seconds(ms: int | None) -> str:
    return "-" if ms is None else f"{ms / 1000:.2f}"


def table(runs: list[dict]) -> str:
    rows = ["| mode | clients | refused | errors | connected p50 / p99 / max (s) | subscribed p50 / p99 / max (s) "
            "| first tick p50 / p99 / max (s) | receiving |",
            "| --- | ---: | --- | --- | --- | --- | --- | ---: |"]
    for run in runs:
        spans = [" / ".join(seconds(run[field][p]) for p in ("p50", "p99", "max"))
                 for field in ("connected", "subscribed", "first_tick")]
        refused, errors = (json.dumps(run[key]) if run[key] else "none" for key in ("refused", "errors"))
        rows.append(f"| {run['mode']} | {run['clients']:,} | {refused} | {errors} | {' | '.join(spans)} "
                    f"| {run['first_tick']['count']:,} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--per-client", type=int, default=3, help="tokens each client subscribes to")
    parser.add_argument("--tokens", type=int, default=300, help="instruments ticking")
    parser.add_argument("--tick-rate", type=float, default=2.0, help="ticks per second per instrument")
    parser.add_argument("--modes", default="gevent,eventlet")
    parser.add_argument("--write", action="store_true", help="write the figures into BENCHMARKS.md")
    args = parser.parse_args()
    machine = describe()
    print(f"machine: {machine}", flush=True)
    with tempfile.TemporaryDirectory() as workdir:
        bench = Bench(args, Path(workdir))
        try:
            bench.bring_up()
            runs = [crowd_run(bench, mode, args.clients, args.per_client) for mode in args.modes.split(",") if mode]
        finally:
            bench.stop_all()
    body = "\n\n".join([
        f"`python -m bench.crowd --clients {args.clients} --per-client {args.per_client} --tokens {args.tokens}` "
        f"(`make bench-crowd`). Every client connects at the same moment (socket.io-client in one Node process "
        f"pinned to core 1; the replica pinned to core 0), subscribes as soon as it is connected, and retries "
        f"nothing: every refusal and error counts. Times are from the start of the crowd. Machine: {machine}.",
        table(runs),
        "Target: 1,000 clients, no `internal_error`, every one subscribed and receiving within 10 s.",
    ])
    print(body, flush=True)
    if args.write:
        write_section(body, SECTION)


if __name__ == "__main__":
    main()
