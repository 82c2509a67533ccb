"""Operations overhead: what a log line and a /metrics scrape cost.

    .venv/bin/python -m bench.ops [--lines 20000] [--scrapes 200]

Log lines go through the service's own formatter (logfmt, then redaction of the finished line),
plain and with secrets to redact. Scrapes render this process's metrics and the cluster
collector reading shard states and the registry size from the real Redis (a benchmark
database of its own) and beat jobs as the database gives them, for a small and a large
deployment. CPU time is the process's own (`time.process_time`); Redis runs on the other core.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from datetime import UTC, datetime, timedelta

from bench.machine import describe
from ticker import jobs, metrics
from ticker.bus import keys
from ticker.bus.connection import redis_client
from ticker.logs import LogfmtFormatter, register_secret

REDIS_URL = "redis://127.0.0.1:6379/14"
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6MTc5NTAwMDAwMH0.c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmU"


def log_cost(lines: int) -> list[tuple[str, float]]:
    register_secret("s3cret-api-secret-for-bench")
    formatter = LogfmtFormatter()
    cases = {
        "plain event": ("connected %s user=%s", ("Yh3kq9XbT0aa", "alice")),
        "JWT in a query string": ("refused %s", (f"GET /socket.io/?EIO=4&token={JWT}",)),
        "Kite login (request_token, checksum)": ("POST %s", ("/session/token request_token=abc123&checksum=9f2c1d",)),
    }
    results = []
    for name, (message, args) in cases.items():
        record = logging.LogRecord("ticker.web.events", logging.INFO, __file__, 1, message, args, None)
        started = time.process_time()
        for _ in range(lines):
            formatter.format(record)
        results.append((name, (time.process_time() - started) / lines * 1e6))
    return results


def seed_cluster(client, accounts: int, slots_per_account: int) -> None:
    client.flushdb()
    now = time.time()
    for a in range(accounts):
        for n in range(slots_per_account):
            client.hset(keys.shard_state(f"key{a}:{n}"), mapping={
                "state": "streaming", "owner": f"host:{1000 + n}", "generation": 3, "pid": 1000 + n,
                "tokens": 2900, "heartbeat": now, "last_error": "", "ticks": 123456789, "frames": 4567890,
                "reconnects": 2, "gap_secs": 1.5,
            })
    client.hset(keys.REGISTRY_TOKENS, mapping={str(t): f"NSE:SYM{t}" for t in range(1000)})


def scrape_cost(scrapes: int, accounts: int, slots: int) -> tuple[float, float, int]:
    client = redis_client(REDIS_URL)
    seed_cluster(client, accounts, slots)
    summaries = [{"api_key": f"key{a}", "enabled": True, "token_valid": True,
                  "token_expires_at": datetime.now(UTC) + timedelta(hours=20)} for a in range(accounts)]
    now = time.time()
    statuses = {name: {"outcome": jobs.OK, "detail": "done", "last_run": now - 1, "last_ok": now - 1,
                       "duration_secs": 0.5}
                for name in ("registry_reload", "ensure_registry", "token_check", "supervise_shards")}
    cluster = metrics.ClusterCollector(client, 9000, accounts=lambda: summaries, jobs=lambda: statuses)
    walls, cpu_started = [], time.process_time()
    for _ in range(scrapes):
        started = time.perf_counter()
        body = metrics.render(metrics.process_collector(), cluster)
        walls.append(time.perf_counter() - started)
    cpu = (time.process_time() - cpu_started) / scrapes
    client.flushdb()
    return statistics.median(walls) * 1e3, cpu * 1e3, len(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=20000)
    parser.add_argument("--scrapes", type=int, default=200)
    args = parser.parse_args()
    print(f"Machine: {describe()}\n")
    print("| log line | µs CPU per line |\n| --- | ---: |")
    for name, micros in log_cost(args.lines):
        print(f"| {name} | {micros:.1f} |")
    print("\n| deployment | shards | scrape wall median (ms) | CPU per scrape (ms) | bytes |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for accounts, slots in ((1, 3), (10, 3)):
        wall, cpu, size = scrape_cost(args.scrapes, accounts, slots)
        print(f"| {accounts} account(s) × {slots} slots | {accounts * slots} | {wall:.2f} | {cpu:.2f} | {size:,} |")


if __name__ == "__main__":
    main()
