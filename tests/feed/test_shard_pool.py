"""The upstream pool at Kite's scale, with real processes: a simulator enforcing small limits
(2 connections per API key, 50 instruments per connection), two accounts, two Celery shard
workers and beat. Demand is written the way web replicas write it."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.conftest import DATABASE_URL, ISOLATED_REDIS_URL
from tests.support.processes import VENV_BIN, Process, free_port, port_open, wait_for
from ticker.bus import assignment, keys
from ticker.bus.connection import redis_client
from ticker.bus.demand import ReplicaDemand
from ticker.bus.ticks import decode
from ticker.db import session_for, sqlalchemy_url
from ticker.registry import accounts, migrate

pytestmark = pytest.mark.integration

ACCOUNTS = {"k1": ("s1", "t1"), "k2": ("s2", "t2")}
PER_CONNECTION, PER_KEY = 50, 2
CAPACITY = PER_CONNECTION * PER_KEY * len(ACCOUNTS)
GRACE_SECS = 3
POOL_DATABASE_URL = DATABASE_URL + "_pool"  # accounts of its own, unseen by the main stack
POOL_CHANNELS = "pool"  # pub/sub namespace of the pool's processes


def fresh_database(url: str) -> None:
    parsed = make_url(sqlalchemy_url(url))
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
    admin.dispose()
    migrate.create_database(url)
    migrate.upgrade(url)


@dataclass
class Pool:
    sim: str
    env: dict[str, str]
    workdir: Path
    redis: object
    workers: list[Process] = field(default_factory=list)
    demand: ReplicaDemand | None = None

    def start_worker(self, name: str) -> Process:
        worker = Process(name, [
            str(VENV_BIN / "celery"), "-A", "tasks", "worker", "-Q", "shards,default", "-n", f"{name}@%h",
            "--concurrency", "6", "--max-tasks-per-child", "1", "--without-gossip", "--without-mingle", "-l", "INFO",
        ], self.env, self.workdir)
        self.workers.append(worker)
        worker.wait_for_output("ready", 30)
        return worker

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


@pytest.fixture(scope="module")
def pool(service_env, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pool")
    client = redis_client(ISOLATED_REDIS_URL)
    client.flushdb()
    fresh_database(POOL_DATABASE_URL)
    with session_for(POOL_DATABASE_URL) as session:
        for api_key, (secret, token) in ACCOUNTS.items():
            accounts.add_account(session, api_key, secret, token, notify=client)
    port = free_port()
    env = {
        **service_env, "REDIS_URL": ISOLATED_REDIS_URL, "DATABASE_URL": POOL_DATABASE_URL,
        "KITE_API_ROOT": f"http://127.0.0.1:{port}", "KITE_TICKER_ROOT": f"ws://127.0.0.1:{port}",
        "KITE_CONNECTIONS_PER_KEY": str(PER_KEY), "KITE_TOKENS_PER_CONNECTION": str(PER_CONNECTION),
        "UNSUBSCRIBE_GRACE_SECS": str(GRACE_SECS), "TICKER_CHANNEL_NAMESPACE": POOL_CHANNELS,
    }
    sim = Process("pool-sim", [
        sys.executable, "-m", "ticker.sim", "--port", str(port), "--seed", "7", "--tick-rate", "4",
        "--max-tokens-per-connection", str(PER_CONNECTION), "--max-connections-per-key", str(PER_KEY),
        *(f"--account={key}:{secret}:{token}" for key, (secret, token) in ACCOUNTS.items()),
    ], env, workdir)
    wait_for(lambda: port_open(port), 30, "the pool simulator")
    pool = Pool(f"http://127.0.0.1:{port}", env, workdir, client)
    pool.demand = ReplicaDemand(client, "pool-replica")
    beating = threading.Event()

    def heartbeat() -> None:  # what a live web replica does
        while not beating.wait(2):
            pool.demand.heartbeat()

    pool.demand.heartbeat()
    threading.Thread(target=heartbeat, daemon=True).start()
    beat = Process("pool-beat", [str(VENV_BIN / "celery"), "-A", "tasks", "beat", "-s",
                                 str(workdir / "beat-schedule"), "-l", "INFO"], env, workdir)
    try:
        pool.start_worker("w1")
        pool.start_worker("w2")
        yield pool
    finally:
        beating.set()
        for process in [beat, *pool.workers, sim]:
            process.stop()


@pytest.fixture(scope="module")
def universe(pool) -> list[int]:
    """NSE equity tokens of the simulator's universe."""
    dump = requests.get(f"{pool.sim}/instruments", timeout=30).text
    return sorted(int(row["instrument_token"]) for row in csv.DictReader(io.StringIO(dump)) if row["segment"] == "NSE")


def assert_kite_limits_kept(pool: Pool) -> None:
    stats = pool.sim_stats()
    assert stats["totals"].get("connections_refused_over_limit", 0) == 0
    assert stats["totals"].get("tokens_refused_over_limit", 0) == 0
    assert all(per_key["max"] <= PER_KEY for per_key in stats["connections_per_key"].values())
    assert stats["max_tokens_per_connection_seen"] <= PER_CONNECTION


def test_demand_beyond_one_slot_spreads_within_kite_limits(pool, universe):
    tokens = universe[:120]
    pool.want(tokens)

    pool.wait_ticking(tokens, timeout=20)
    loads = pool.slot_loads()
    assert sum(loads.values()) == 120 and max(loads.values()) <= PER_CONNECTION
    assert_kite_limits_kept(pool)


def test_demand_beyond_capacity_is_reported_as_overflow_not_dropped_silently(pool, universe):
    pool.want(universe[:CAPACITY + 30])

    wait_for(lambda: pool.redis.scard(keys.ASSIGNMENT_OVERFLOW) == 30, 10, "30 tokens in overflow")
    assert assignment.capacity(pool.redis) == (CAPACITY, CAPACITY)
    pool.wait_ticking(universe[:CAPACITY], timeout=30)
    assert_kite_limits_kept(pool)
    pool.want(universe[:60])
    wait_for(lambda: pool.redis.scard(keys.ASSIGNMENT_OVERFLOW) == 0, 10, "the overflow to clear")


def test_a_second_copy_of_a_shard_task_does_not_stream(pool, universe):
    slot = next(s for s, load in pool.slot_loads().items() if load)
    before = pool.sim_stats()["totals"]["connections"]
    subprocess.run([str(VENV_BIN / "celery"), "-A", "tasks", "call", "tasks.shards.run_shard", "--args", f'["{slot}"]'],
                   env=pool.env, check=True, capture_output=True, timeout=30)

    wait_for(lambda: any("already owned" in w.output() for w in pool.workers), 10, "the duplicate to give up")
    assert pool.sim_stats()["totals"]["connections"] == before
    assert_kite_limits_kept(pool)


def test_dropped_connections_reconnect_and_resubscribe(pool, universe):
    tokens = universe[:60]
    pool.want(tokens)
    pool.wait_ticking(tokens, timeout=20)

    requests.post(f"{pool.sim}/_sim/drop", timeout=5)
    assert pool.wait_ticking(tokens, timeout=15) < 15
    assert_kite_limits_kept(pool)


def test_a_silent_feed_is_detected_and_reconnected(pool, universe):
    tokens = universe[:60]
    pool.wait_ticking(tokens, timeout=20)
    reconnects = sum(int(pool.redis.hget(keys.shard_state(s), "reconnects") or 0) for s in pool.slot_loads())

    requests.post(f"{pool.sim}/_sim/stall", params={"seconds": 30, "pongs": 1}, timeout=5)
    pool.wait_ticking(tokens, timeout=20)  # the stall lasts 30 s: only a new connection brings ticks
    after = sum(int(pool.redis.hget(keys.shard_state(s), "reconnects") or 0) for s in pool.slot_loads())
    assert after > reconnects


def owner_worker(pool: Pool, slot: str) -> Process:
    child = int(pool.redis.hget(keys.shard_state(slot), "pid"))
    parent = int(Path(f"/proc/{child}/stat").read_text().split()[3])
    return next(w for w in pool.workers if w.pid == parent)


def test_kill_9_of_a_worker_is_taken_over_within_15_seconds(pool, universe):
    tokens = universe[:60]
    pool.wait_ticking(tokens, timeout=20)
    busy = [s for s, load in pool.slot_loads().items() if load]
    victim = owner_worker(pool, busy[0])

    os.killpg(victim.pid, signal.SIGKILL)  # the worker and its children, with no chance to clean up
    pool.workers.remove(victim)
    took = pool.wait_ticking(tokens, timeout=15)
    assert took < 15
    assert_kite_limits_kept(pool)
    pool.start_worker("w3")  # back to two workers for the tests that follow


def test_a_rejected_token_moves_its_tokens_and_a_new_token_brings_the_account_back(pool, universe):
    tokens = universe[:60]
    pool.wait_ticking(tokens, timeout=20)
    victim = next(s for s, load in pool.slot_loads().items() if load).rsplit(":", 1)[0]

    requests.post(f"{pool.sim}/_sim/expire", params={"api_key": victim}, timeout=5)
    wait_for(lambda: all(not s.startswith(victim) for s in assignment.usable_slots(pool.redis)), 15,
             f"{victim}'s slots to leave the pool")
    pool.wait_ticking(tokens, timeout=15)  # the other account's free capacity took them
    with session_for(POOL_DATABASE_URL) as session:
        assert not accounts.account_credentials(session, victim).token_valid

    login = requests.get(f"{pool.sim}/connect/login", params={"api_key": victim, "v": 3},
                         allow_redirects=False, timeout=5)
    request_token = login.headers["Location"].split("request_token=")[1].split("&")[0]
    from kiteconnect import KiteConnect

    session_data = KiteConnect(victim, root=pool.sim).generate_session(request_token, ACCOUNTS[victim][0])
    with session_for(POOL_DATABASE_URL) as session:
        accounts.store_access_token(session, victim, session_data["access_token"], notify=pool.redis)
    wait_for(lambda: any(s.startswith(victim) for s in assignment.usable_slots(pool.redis)), 10,
             f"{victim}'s slots to return")
    assert_kite_limits_kept(pool)


def test_unwanted_tokens_are_unsubscribed_upstream_after_the_grace_period_not_before(pool, universe):
    tokens = universe[:60]
    pool.want(tokens)
    pool.wait_ticking(tokens, timeout=20)

    pool.want(tokens[:10])
    dropped_at = time.time()
    time.sleep(GRACE_SECS * 0.6)
    assert sum(c["tokens"] for c in pool.sim_stats()["connections"]) == 60
    wait_for(lambda: sum(c["tokens"] for c in pool.sim_stats()["connections"]) == 10, GRACE_SECS + 5,
             "the upstream unsubscribe")
    assert time.time() - dropped_at >= GRACE_SECS


def test_sequence_numbers_have_no_gaps_within_a_connection(pool, universe):
    token = universe[0]
    pool.want(universe[:10])
    pubsub = pool.redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.channel_for(token).replace(keys.CHANNELS, f"{keys.PREFIX}:{POOL_CHANNELS}"))
    seqs = []
    deadline = time.time() + 4
    while time.time() < deadline:
        message = pubsub.get_message(timeout=0.5)
        if message:
            seqs += [t["seq"] for t in decode(message["data"]) if t["instrument_token"] == token]
    pubsub.close()
    assert len(seqs) >= 8
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_order_updates_are_published_on_the_accounts_channel(pool, universe):
    pool.want(universe[:10])
    pool.wait_ticking(universe[:10], timeout=20)
    api_key = next(s for s, load in pool.slot_loads().items() if load).rsplit(":", 1)[0]
    pubsub = pool.redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.orders_of(api_key).replace(keys.CHANNELS, f"{keys.PREFIX}:{POOL_CHANNELS}"))

    requests.post(f"{pool.sim}/_sim/order", params={"api_key": api_key}, json={"tradingsymbol": "INFY"}, timeout=5)
    message = wait_for(lambda: pubsub.get_message(timeout=0.2), 10, "the order update")
    pubsub.close()
    assert decode(message["data"])["tradingsymbol"] == "INFY"


def test_a_rolling_restart_never_breaks_kites_connection_limit(pool, universe):
    tokens = universe[:120]
    pool.want(tokens)
    pool.wait_ticking(tokens, timeout=20)

    for old in list(pool.workers):
        pool.start_worker(f"{old.name}-next")
        old.stop(timeout=20)  # a warm shutdown: its shards close, release, and are taken over
        pool.workers.remove(old)
        pool.wait_ticking(tokens, timeout=15)
    assert_kite_limits_kept(pool)
