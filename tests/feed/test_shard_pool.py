"""The upstream pool at Kite's scale, with real processes: a simulator enforcing small limits
(2 connections per API key, 50 instruments per connection), two accounts, two Celery shard
workers and beat. Demand is written the way web replicas write it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import DATABASE_URL, ISOLATED_REDIS_URL
from tests.support.pool import (
    ACCOUNTS,
    CAPACITY,
    GRACE_SECS,
    PER_CONNECTION,
    PER_KEY,
    Pool,
    nse_tokens,
    pool_channels,
    running_pool,
)
from tests.support.processes import VENV_BIN, Process, wait_for
from ticker.bus import assignment, keys
from ticker.bus.ticks import decode, decode_batch
from ticker.db import session_for
from ticker.registry import accounts

pytestmark = pytest.mark.integration

POOL_DATABASE_URL = DATABASE_URL + "_pool"  # accounts of its own, unseen by the main stack


def in_pool(channel: str) -> str:
    """`channel` as the pool's processes name it (their own pub/sub namespace)."""
    return channel.replace(keys.CHANNELS, f"{keys.PREFIX}:{pool_channels(ISOLATED_REDIS_URL)}")


@pytest.fixture(scope="module")
def pool(service_env, tmp_path_factory):
    with running_pool(service_env, tmp_path_factory.mktemp("pool"), POOL_DATABASE_URL, ISOLATED_REDIS_URL) as pool:
        yield pool


@pytest.fixture(scope="module")
def universe(pool) -> list[int]:
    return nse_tokens(pool.sim)


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
    pool.wait_ticking(tokens, timeout=30)  # the other account's free capacity took them
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
    pubsub.subscribe(in_pool(keys.channel_for(token)))
    seqs = []
    deadline = time.time() + 4
    while time.time() < deadline:
        message = pubsub.get_message(timeout=0.5)
        if message:
            seqs += [t["seq"] for t in decode_batch(message["data"]) if t["instrument_token"] == token]
    pubsub.close()
    assert len(seqs) >= 8
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_order_updates_are_published_on_the_accounts_channel(pool, universe):
    pool.want(universe[:10])
    pool.wait_ticking(universe[:10], timeout=20)
    api_key = next(s for s, load in pool.slot_loads().items() if load).rsplit(":", 1)[0]
    pubsub = pool.redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(in_pool(keys.orders_of(api_key)))

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
        pool.wait_ticking(tokens, timeout=30)
    assert_kite_limits_kept(pool)
