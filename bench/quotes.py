"""Market quotes benchmark: what one web replica answers on `GET /quote`.

    .venv/bin/python -m bench.quotes [--seconds 10] [--connections 32] [--rate 500]

One web replica (`python wsgi.py`, gevent) on a Redis server of the benchmark's own, holding
1,000 instruments in the registry mirror, each with a full-mode last tick (5+5 depth levels)
and streamed in full mode: every quote is answered from the cache, the path a quote takes once
its instruments stream (on-demand subscription is measured by `make bench-recovery`'s
"subscribe to first tick"). The load comes from wrk (Debian's `wrk`, a C HTTP load tool) with a
Lua script that sets Kite's `Authorization: token api_key:<jwt>` header, as `KiteConnect` sends
it, and a path naming the instruments as `?i=NSE:SYMn&...`:

- throughput: wrk keeps `--connections` connections busy (closed loop) for `--seconds`, with 1,
  50 and 500 instruments a request;
- latency at a rate: 50 instruments a request, each connection paced by wrk's `delay()` so the
  whole load is `--rate` requests a second; wrk's own latency percentiles (each connection waits
  its pace between requests, so as long as answers come back faster than the pace no request
  waits behind a slow one).

wrk and Redis share the machine's cores with the replica: on a 2-core machine the figures are
the replica's share of it, not of a core of its own.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import requests

from bench.machine import describe
from tests.support.processes import Process, free_port, port_open, start_redis, wait_for
from ticker.bus import keys
from ticker.bus.connection import redis_client
from ticker.bus.ticks import encode
from ticker.web.auth import write_key_pair

INSTRUMENTS = 1000
NSE = 1  # the segment of an NSE equity token (token & 0xff)


def token_of(n: int) -> int:
    return (100 + n) << 8 | NSE


def full_tick(n: int) -> dict:
    price = 100.0 + n
    level = [{"quantity": 10 + i, "price": round(price - 0.05 * i, 2), "orders": 1 + i} for i in range(5)]
    return {
        "tradable": True, "mode": "full", "instrument_token": token_of(n), "last_price": price,
        "last_traded_quantity": 5, "average_traded_price": price - 0.4, "volume_traded": 120000 + n,
        "total_buy_quantity": 4000, "total_sell_quantity": 3900,
        "ohlc": {"open": price - 1, "high": price + 2, "low": price - 2, "close": price - 0.5}, "change": 0.5,
        "last_trade_time": "2026-11-27T09:15:01+05:30", "oi": 0, "oi_day_high": 0, "oi_day_low": 0,
        "exchange_timestamp": "2026-11-27T09:15:03+05:30", "depth": {"buy": level, "sell": level},
        "seq": 1, "epoch": 1, "ingest_ts": int(time.time() * 1000),
    }


def seed(redis_url: str) -> None:
    """The registry mirror and a streamed full-mode last tick for every instrument."""
    client = redis_client(redis_url)
    client.flushdb()
    names = {token_of(n): f"NSE:SYM{n}" for n in range(INSTRUMENTS)}
    client.hset(keys.REGISTRY_TOKENS, mapping=names)
    client.hset(keys.REGISTRY_SYMBOLS, mapping={name: token for token, name in names.items()})
    client.hset(keys.LAST_TICKS, mapping={token_of(n): encode(full_tick(n)) for n in range(INSTRUMENTS)})
    client.hset(keys.ASSIGNED_MODE, mapping=dict.fromkeys(names, "full"))
    client.hset(keys.ASSIGNED_SLOT, mapping=dict.fromkeys(names, "bench:0"))


def mint(private: Path, public: Path) -> str:
    os.environ.setdefault("TICKER_ENV", "test")
    from ticker import create_app
    from ticker.config import Config
    from ticker.web.auth import mint as mint_token

    app = create_app(Config)
    app.config.update(JWT_PRIVATE_KEY=private.read_text(), JWT_PUBLIC_KEY=public.read_text(),
                      JWT_DECODE_AUDIENCE=None, JWT_ENCODE_AUDIENCE=None, JWT_DECODE_ISSUER=None,
                      JWT_ENCODE_ISSUER=None)
    with app.app_context():
        return mint_token("bench", timedelta(hours=1))


def start_replica(workdir: Path, redis_url: str, public: Path) -> tuple[Process, str]:
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("JWT_", "KITE_"))},
           "PORT": str(port), "REDIS_URL": redis_url, "TICKER_ENV": "test", "JWT_PUBLIC_KEY_FILE": str(public),
           "TICKER_INSTANCE_DIR": str(workdir), "LOG_LEVEL": "WARNING",
           "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/ticker_bench",
           # One user sends every request: counted as any user's, never refused.
           "MAX_REST_REQUESTS_PER_USER_PER_SEC": "100000000"}
    web = Process("web", [sys.executable, "wsgi.py"], env, workdir)
    wait_for(lambda: port_open(port) or not web.alive(), 30, "the replica to listen")
    assert web.alive(), web.output()[-2000:]
    return web, f"http://127.0.0.1:{port}"


LUA = """
wrk.method = "GET"
wrk.path = "{path}"
wrk.headers["Authorization"] = "token bench_key:{jwt}"
"""
PACE = """
function delay()
  return {pace_ms}
end
"""


def cpu_secs(pid: int) -> float:
    """User and system CPU time `pid` has used (its utime and stime in /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(web: Process, url: str, jwt: str, count: int, seconds: float, connections: int, pace_ms: float,
        workdir: Path) -> dict:
    """One wrk run against `/quote` with `count` instruments (0: `/health/live`, the server's
    floor), and the replica's CPU time per request meanwhile."""
    path = "/quote?" + "&".join(f"i=NSE%3ASYM{n}" for n in range(count)) if count else "/health/live"
    script = workdir / f"quote-{count}-{pace_ms}.lua"
    script.write_text(LUA.format(path=path, jwt=jwt) + (PACE.format(pace_ms=pace_ms) if pace_ms else ""))
    threads = "1" if pace_ms else "2"  # a paced load is light: leave the replica the other core
    argv = ["wrk", "-t", threads, "-c", str(connections), "-d", f"{seconds:g}s", "--latency", "-s", str(script), url]
    cpu = cpu_secs(web.pid)
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    cpu = cpu_secs(web.pid) - cpu
    try:
        result = parse_wrk(out)
    except (KeyError, AttributeError) as exc:
        raise RuntimeError(f"unexpected wrk output:\n{out}") from exc
    result["cpu_ms"] = cpu / max(1, result["requests"]) * 1e3
    return result


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_wrk(out: str) -> dict:
    def ms(text: str) -> float:
        value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
        return float(value) * UNITS[unit]

    percentiles = {int(p): ms(v) for p, v in re.findall(r"^\s+(\d+)%\s+(\S+)\s*$", out, re.M)}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "p50": percentiles[50],
            "p99": percentiles[99], "requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "errors": int(errors.group(1)) if errors else 0}


def open_loop(web: Process, url: str, jwt: str, count: int, rate: int, seconds: float) -> dict:
    """`rate` requests a second for `seconds`, each sent at its scheduled time whether or not
    earlier ones were answered (an open loop: a slow answer cannot hold the next request back),
    over a pool of kept-alive connections (aiohttp); each latency counts from the request's
    scheduled time, so time the client itself fell behind counts against the server too."""
    import asyncio
    import statistics

    import aiohttp

    path = "/quote?" + "&".join(f"i=NSE%3ASYM{n}" for n in range(count))
    headers = {"Authorization": f"token bench_key:{jwt}"}

    async def run() -> tuple[list[float], int]:
        loop = asyncio.get_running_loop()
        latencies: list[float] = []
        failed = 0

        async def one(session: aiohttp.ClientSession, scheduled: float) -> None:
            nonlocal failed
            async with session.get(url + path, headers=headers) as reply:
                await reply.read()
                failed += reply.status != 200
            latencies.append(loop.time() - scheduled)

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as session:
            await one(session, loop.time())  # a connection open before the clock starts
            latencies.clear()
            start, tasks = loop.time() + 0.1, []
            for k in range(int(rate * seconds)):
                scheduled = start + k / rate
                await asyncio.sleep(max(0.0, scheduled - loop.time()))
                tasks.append(asyncio.create_task(one(session, scheduled)))
            await asyncio.gather(*tasks)
            return latencies, failed

    cpu = cpu_secs(web.pid)
    latencies, failed = asyncio.run(run())
    cpu = cpu_secs(web.pid) - cpu
    latencies.sort()
    return {"requests": len(latencies), "errors": failed, "p50": statistics.median(latencies) * 1e3,
            "p99": latencies[int(len(latencies) * 0.99) - 1] * 1e3, "cpu_ms": cpu / len(latencies) * 1e3}


def check(url: str, jwt: str) -> None:
    """One request as KiteConnect sends it, before any figure is trusted."""
    reply = requests.get(f"{url}/quote", params={"i": ["NSE:SYM1", "NSE:SYM2"]}, timeout=10,
                         headers={"Authorization": f"token k:{jwt}"}).json()
    assert set(reply["data"]) == {"NSE:SYM1", "NSE:SYM2"} and reply["subscribed"] == [], reply


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--paced-connections", type=int, default=25)
    args = parser.parse_args()
    machine = describe()
    with tempfile.TemporaryDirectory(prefix="bench-quotes-") as tmp:
        workdir = Path(tmp)
        private, public = workdir / "jwt.pem", workdir / "jwt.pub"
        write_key_pair(private, public)
        redis_port = free_port()
        redis_server = start_redis(redis_port, workdir)
        web = None
        try:
            redis_url = f"redis://127.0.0.1:{redis_port}/0"
            seed(redis_url)
            jwt = mint(private, public)
            web, url = start_replica(workdir, redis_url, public)
            check(url, jwt)
            wrk(web, url, jwt, 50, 2, args.connections, 0, workdir)  # warm up
            print(f"Machine: {machine}")
            print("| instruments a request | requests/s | instruments/s | p50 | p99 | replica CPU a request "
                  "| requests per replica CPU-second |")
            print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
            for count in (0, 1, 50, 500):
                r = wrk(web, url, jwt, count, args.seconds, args.connections, 0, workdir)
                assert r["errors"] == 0, r
                rate, label = r["rps"], count or "`/health/live` (floor)"
                print(f"| {label} | {rate:,.0f} | {rate * count:,.0f} | {r['p50']:.2f} ms | {r['p99']:.2f} ms "
                      f"| {r['cpu_ms']:.2f} ms | {1000 / r['cpu_ms']:,.0f} |")
            pace = 1000 * args.paced_connections / args.rate
            r = wrk(web, url, jwt, 50, args.seconds * 2, args.paced_connections, pace, workdir)
            assert r["errors"] == 0, r
            print(f"\n50 instruments at {args.rate} requests/s ({args.paced_connections} connections, each every "
                  f"{pace:g} ms): {r['rps']:,.0f} requests/s answered, p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms, "
                  f"replica CPU {r['cpu_ms']:.2f} ms a request ({r['requests']:,} requests); "
                  f"load average {os.getloadavg()[0]:.2f} at the end")
            r = open_loop(web, url, jwt, 50, args.rate, args.seconds * 2)
            assert r["errors"] == 0, r
            print(f"50 instruments at {args.rate} requests/s, open loop (aiohttp): p50 {r['p50']:.2f} ms, "
                  f"p99 {r['p99']:.2f} ms, replica CPU {r['cpu_ms']:.2f} ms a request ({r['requests']:,} requests); "
                  f"load average {os.getloadavg()[0]:.2f} at the end")
        finally:
            if web is not None:
                web.stop()
            redis_server.stop()


if __name__ == "__main__":
    main()
