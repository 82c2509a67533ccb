"""A pool of upstream connections for tests and benchmarks: a simulator enforcing small
limits (2 connections per API key, 50 instruments per connection), two accounts, two Celery
shard workers and beat, all real processes. Demand is written the way web replicas write it.
With `ticker_proxy`, the shards reach the simulator's ticker through a TcpProxy the test
controls (`pool.proxy`: slow down, black-hole or reset their connections); REST goes direct."""

from __future__ import annotations

import csv
import io
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis as redis_lib
import requests

from tests.support.processes import VENV_BIN, Process, free_port, port_open, stop_all, wait_for
from tests.support.proxy import TcpProxy
from ticker.bus import assignment, keys
from ticker.bus.connection import redis_client
from ticker.bus.demand import ReplicaDemand
from ticker.bus.ticks import decode
from ticker.db import session_for
from ticker.registry import accounts, migrate

ACCOUNTS = {"k1": ("s1", "t1"), "k2": ("s2", "t2")}
PER_CONNECTION, PER_KEY = 50, 2
CAPACITY = PER_CONNECTION * PER_KEY * len(ACCOUNTS)
GRACE_SECS = 3
POOL_CHANNELS = "pool"  # pub/sub namespace of the pool's processes (with its Redis database)


@dataclass
class Pool:
    sim: str
    env: dict[str, str]
    workdir: Path
    redis: object
    workers: list[Process] = field(default_factory=list)
    demand: ReplicaDemand | None = None
    proxy: TcpProxy | None = None  # between the shards and the simulator's ticker, if asked for

    def start_worker(self, name: str) -> Process:
        return self.start_workers(name)[0]

    def start_workers(self, *names: str) -> list[Process]:
        """Start shard workers at once; returns when every one is ready."""
        workers = [Process(name, [
            str(VENV_BIN / "celery"), "-A", "tasks", "worker", "-Q", "shards,default", "-n", f"{name}@%h",
            "--concurrency", "6", "--max-tasks-per-child", "1", "--without-gossip", "--without-mingle", "-l", "INFO",
        ], self.env, self.workdir) for name in names]
        self.workers += workers
        for worker in workers:
            worker.wait_for_output("ready", 30)
        return workers

    def sim_stats(self) -> dict:
        return requests.get(f"{self.sim}/_sim/stats", timeout=5).json()

    def want(self, tokens: list[int], mode: str = "quote") -> None:
        current = set(self.demand.counts)
        self.demand.remove(sorted(current - set(tokens)), mode)
        self.demand.add(sorted(set(tokens) - current), mode)

    def ticked_since(self, tokens: list[int], since_ms: int) -> set[int]:
        raws = self.redis.hmget(keys.LAST_TICKS, tokens)
        return {t for t, raw in zip(tokens, raws, strict=True) if raw and decode(raw)["ingest_ts"] > since_ms}

    def wait_ticking(self, tokens: list[int], timeout: float) -> float:
        """Seconds until every token has a tick newer than now."""
        start_ms = int(time.time() * 1000)
        wait_for(lambda: len(self.ticked_since(tokens, start_ms)) == len(tokens), timeout,
                 f"ticks for all {len(tokens)} tokens", interval=0.05)
        return time.time() - start_ms / 1000

    def slot_loads(self) -> dict[str, int]:
        return {slot: self.redis.hlen(keys.slot_tokens(slot)) for slot in assignment.usable_slots(self.redis)}


def pool_channels(redis_url: str) -> str:
    """The pool's pub/sub namespace: two pools running at once (on other databases) never meet."""
    return f"{POOL_CHANNELS}{redis_url.rsplit('/', 1)[-1]}"


@contextmanager
def running_pool(base_env: dict[str, str], workdir: Path, database_url: str, redis_url: str,
                 ticker_proxy: bool = False) -> Iterator[Pool]:
    """A simulator with small limits, two accounts, two shard workers and beat; stopped on exit."""
    port = free_port()
    proxy = TcpProxy(("127.0.0.1", port)).start() if ticker_proxy else None
    ticker = proxy.url_host if proxy else f"127.0.0.1:{port}"
    env = {
        **base_env, "REDIS_URL": redis_url, "DATABASE_URL": database_url,
        "KITE_API_ROOT": f"http://127.0.0.1:{port}", "KITE_TICKER_ROOT": f"ws://{ticker}",
        "KITE_CONNECTIONS_PER_KEY": str(PER_KEY), "KITE_TOKENS_PER_CONNECTION": str(PER_CONNECTION),
        "UNSUBSCRIBE_GRACE_SECS": str(GRACE_SECS), "TICKER_CHANNEL_NAMESPACE": pool_channels(redis_url),
    }
    sim = Process("pool-sim", [
        sys.executable, "-m", "ticker.sim", "--port", str(port), "--seed", "7", "--tick-rate", "4",
        "--max-tokens-per-connection", str(PER_CONNECTION), "--max-connections-per-key", str(PER_KEY),
        *(f"--account={key}:{secret}:{token}" for key, (secret, token) in ACCOUNTS.items()),
    ], env, workdir)
    beating = threading.Event()
    pool = beat = None
    try:  # whatever fails from here on, nothing started outlives the pool
        # Redis and the database are made ready while the simulator starts.
        client = redis_client(redis_url)
        client.flushdb()
        migrate.recreate_database(database_url)
        with session_for(database_url) as session:
            for api_key, (secret, token) in ACCOUNTS.items():
                accounts.add_account(session, api_key, secret, token, notify=client)
        wait_for(lambda: port_open(port), 30, "the pool simulator")
        pool = Pool(f"http://127.0.0.1:{port}", env, workdir, client, proxy=proxy)
        pool.demand = ReplicaDemand(client, "pool-replica")

        def heartbeat() -> None:  # what a live web replica does, through Redis restarts too
            while not beating.wait(2):
                try:
                    pool.demand.heartbeat()
                except redis_lib.RedisError:
                    pass

        pool.demand.heartbeat()
        threading.Thread(target=heartbeat, daemon=True).start()
        beat = Process("pool-beat", [str(VENV_BIN / "celery"), "-A", "tasks", "beat", "-s",
                                     str(workdir / "beat-schedule"), "-l", "INFO"], env, workdir)
        pool.start_workers("w1", "w2")
        yield pool
    finally:
        beating.set()
        stop_all([process for process in (beat, *(pool.workers if pool else ()), sim) if process is not None])
        if proxy is not None:
            proxy.stop()


def nse_tokens(sim_url: str) -> list[int]:
    """NSE equity tokens of the simulator's universe."""
    dump = requests.get(f"{sim_url}/instruments", timeout=30).text
    return sorted(int(row["instrument_token"]) for row in csv.DictReader(io.StringIO(dump)) if row["segment"] == "NSE")
