"""Recovery benchmark: how fast the upstream pool reacts, as medians over several runs.

    .venv/bin/python -m bench.recovery [--runs 5]

Runs the same real pool as the tests (tests/support/pool.py: a simulator enforcing 2
connections per key and 50 instruments per connection, two accounts, two Celery shard
workers, beat) on its own Redis database and PostgreSQL database, and measures:
- subscribe to first tick: demand for a token nobody streams until its first tick is in Redis;
- reconnect: the simulator drops every connection, until every token ticks again;
- takeover: the worker streaming a slot is killed with SIGKILL (with its children, no chance to
  clean up), until every token ticks again from the surviving worker.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

from bench.machine import describe
from tests.support.pool import nse_tokens, running_pool
from tests.support.processes import VENV_BIN, wait_for
from ticker.bus import keys

REDIS_URL = "redis://127.0.0.1:6379/7"  # databases 0-6 and 9-15 are taken by runs and tests
DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/ticker_bench"


def first_tick(pool, token: int) -> float:
    start = time.time()
    pool.want([*pool.demand.counts, token])
    wait_for(lambda: pool.redis.hexists(keys.LAST_TICKS, token), 10, f"a first tick of {token}", interval=0.01)
    return time.time() - start


def reconnect(pool, tokens: list[int]) -> float:
    requests.post(f"{pool.sim}/_sim/drop", timeout=5)
    return pool.wait_ticking(tokens, timeout=20)


def takeover(pool, tokens: list[int], run: int) -> float:
    slot = next(s for s, load in pool.slot_loads().items() if load)
    child = int(pool.redis.hget(keys.shard_state(slot), "pid"))
    parent = int(Path(f"/proc/{child}/stat").read_text().split()[3])
    victim = next(w for w in pool.workers if w.pid == parent)
    os.killpg(victim.pid, signal.SIGKILL)
    pool.workers.remove(victim)
    took = pool.wait_ticking(tokens, timeout=30)
    pool.start_worker(f"replacement-{run}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1",
           "TICKER_ENV": "test", "LOG_LEVEL": "WARNING"}
    print(f"machine: {describe()}")
    with tempfile.TemporaryDirectory() as workdir, running_pool(env, Path(workdir), DATABASE_URL, REDIS_URL) as pool:
        universe = nse_tokens(pool.sim)
        steady = universe[:60]
        pool.want(steady)
        pool.wait_ticking(steady, timeout=30)
        results = {
            "subscribe to first tick": [first_tick(pool, t) for t in universe[100:100 + args.runs]],
            "reconnect after a dropped connection": [reconnect(pool, steady) for _ in range(args.runs)],
            "takeover after kill -9 of a worker": [takeover(pool, steady, n) for n in range(min(args.runs, 3))],
        }
    print(f"\n{'measure':40} {'median':>8} {'min':>8} {'max':>8}  runs")
    for name, values in results.items():
        print(f"{name:40} {statistics.median(values):7.2f}s {min(values):7.2f}s {max(values):7.2f}s  {len(values)}")


if __name__ == "__main__":
    sys.exit(main())
