"""The upstream pool at Kite's scale, with real processes: a simulator enforcing small limits
(2 connections per API key, 50 instruments per connection), two accounts, two Celery shard
workers and beat, on a Redis server of the module's own (so it can be restarted empty), the
shards reaching the simulator's ticker through a TCP proxy the tests control. Demand is
written the way web replicas write it.

Every test ends by checking Kite's limits over the whole run so far, as the simulator saw them
(`assert_kite_limits_kept`): never more connections per key than allowed, and never two
connections at once for one slot. The tests run in file order, so the last ones check that
limit across every fault before them: dropped and silent connections, a duplicate shard task,
malformed frames, refused tokens in each form, a feed slower than a lease, Redis restarted
empty, kill -9 of a worker and a rolling restart."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tasks.shards import SUPERVISE_EVERY_SECS
from tests.conftest import DATABASE_URL
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
from tests.support.processes import VENV_BIN, Process, free_port, start_redis, wait_for
from ticker.bus import assignment, keys
from ticker.bus.ticks import decode, decode_batch
from ticker.db import session_for
from ticker.registry import accounts

pytestmark = pytest.mark.integration

POOL_DATABASE_URL = DATABASE_URL + "_pool"  # accounts of its own, unseen by the main stack
SLOW_FEED_DELAY_SECS = 3.5  # each way, per chunk: a handshake takes 7 s, a lease lives 6 s
SLOW_FEED_SECS = 11.0  # long enough for a lease to expire and beat to hand its slot over


class RedisServer:
    """The pool's own Redis server; `restart()` kills it (SIGKILL) and starts it empty."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = start_redis(self.port, workdir, "pool-redis")

    def restart(self) -> None:
        self.process.kill()
        self.process.proc.wait(10)  # its port is free for the next one
        self.process = start_redis(self.port, self.workdir, "pool-redis-again")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("pool-redis"))
    yield server
    server.process.stop()


def in_pool(pool: Pool, channel: str) -> str:
    """`channel` as the pool's processes name it (their own pub/sub namespace)."""
    return channel.replace(keys.CHANNELS, f"{keys.PREFIX}:{pool_channels(pool.env['REDIS_URL'])}")


@pytest.fixture(scope="module")
def pool(service_env, tmp_path_factory, redis_server):
    with running_pool(service_env, tmp_path_factory.mktemp("pool"), POOL_DATABASE_URL, redis_server.url,
                      ticker_proxy=True) as pool:
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
    # One lease per slot: never two upstream connections at once for one slot, even for a moment.
    assert {slot: seen["max"] for slot, seen in stats["connections_per_slot"].items()} == dict.fromkeys(
        stats["connections_per_slot"], 1)


def busy_slots(pool: Pool) -> list[str]:
    return [slot for slot, load in pool.slot_loads().items() if load]


def shard_state(pool: Pool, slot: str) -> dict[str, str]:
    return pool.redis.hgetall(keys.shard_state(slot))


def streaming_state(pool: Pool, slot: str) -> dict[str, str]:
    return wait_for(lambda: (state := shard_state(pool, slot)).get("state") == "streaming" and state, 5,
                    f"{slot}'s shard to report streaming")


def token_valid(api_key: str) -> bool:
    with session_for(POOL_DATABASE_URL) as session:
        return accounts.account_credentials(session, api_key).token_valid


def log_in_again(pool: Pool, *api_keys: str) -> None:
    """Kite's login flow for each account, the new token stored as the login callback stores
    it; returns once their slots are back in the pool."""
    from kiteconnect import KiteConnect

    for api_key in api_keys:
        login = requests.get(f"{pool.sim}/connect/login", params={"api_key": api_key, "v": 3},
                             allow_redirects=False, timeout=5)
        request_token = login.headers["Location"].split("request_token=")[1].split("&")[0]
        session_data = KiteConnect(api_key, root=pool.sim).generate_session(request_token, ACCOUNTS[api_key][0])
        with session_for(POOL_DATABASE_URL) as session:
            accounts.store_access_token(session, api_key, session_data["access_token"], notify=pool.redis)
    wait_for(lambda: {s.rsplit(":", 1)[0] for s in assignment.usable_slots(pool.redis)} >= set(api_keys), 10,
             f"the slots of {', '.join(api_keys)} to return")


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


def test_dropped_connections_reconnect_resubscribe_and_leave_no_standing_error(pool, universe):
    tokens = universe[:60]
    pool.want(tokens)
    pool.wait_ticking(tokens, timeout=20)
    dropped_at = time.time()

    requests.post(f"{pool.sim}/_sim/drop", timeout=5)
    assert pool.wait_ticking(tokens, timeout=15) < 15
    assert_kite_limits_kept(pool)

    def recovered() -> bool:  # the drop is history: kept with its time, but no error now
        states = [shard_state(pool, slot) for slot in busy_slots(pool)]
        return all(s.get("state") == "streaming" and s.get("error") == "" and s.get("last_error")
                   and float(s.get("last_error_at") or 0) >= dropped_at for s in states)

    wait_for(recovered, 5, "every shard to report its drop as a past error, and none now")


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

    log_in_again(pool, victim)
    assert_kite_limits_kept(pool)


def test_unwanted_tokens_are_unsubscribed_upstream_after_the_grace_period_not_before(pool, universe):
    tokens = universe[:60]
    pool.want(tokens)
    pool.wait_ticking(tokens, timeout=20)
    wait_for(lambda: sum(c["tokens"] for c in pool.sim_stats()["connections"]) == 60, GRACE_SECS + 5,
             "earlier tests' tokens to leave the upstream")

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
    pubsub.subscribe(in_pool(pool, keys.channel_for(token)))
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
    pubsub.subscribe(in_pool(pool, keys.orders_of(api_key)))

    requests.post(f"{pool.sim}/_sim/order", params={"api_key": api_key}, json={"tradingsymbol": "INFY"}, timeout=5)
    message = wait_for(lambda: pubsub.get_message(timeout=0.2), 10, "the order update")
    pubsub.close()
    assert decode(message["data"])["tradingsymbol"] == "INFY"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


MALFORMED = [
    {"text": '{"type": "order"}'},  # an order update without its order: once fatal to the shard
    {"text": '{"type": "order", "data": [1, 2]}'},
    {"text": "not json"},
    {"text": "[1, 2]"},
    {"text": '{"type": "surprise", "data": {}}'},
    {"opcode": 1, "data": b64(b"\xff\xfe not UTF-8")},
    {"binary": b64(b"\x00\x02\x00\x08abc")},  # two packets declared, a piece of one sent
    {"binary": b64(b"\x00\x01\x00\x05hello")},  # a packet of a length Kite does not document
    {"binary": b64(b"\x00"), "repeat": 2 << 20},  # 2 MiB: larger than any frame 50 tokens make
    {"opcode": 3, "data": b64(b"reserved opcode")},
    {"binary": b64(b"\x00\x00"), "rsv": 2},
    {"opcode": 0, "data": b64(b"a continuation of nothing")},
]


def test_malformed_frames_from_kite_neither_stop_a_shard_nor_cost_a_reconnect(pool, universe):
    tokens = universe[:60]
    pool.want(tokens)
    pool.wait_ticking(tokens, timeout=20)
    api_key = busy_slots(pool)[0].rsplit(":", 1)[0]
    slots = [s for s in busy_slots(pool) if s.startswith(f"{api_key}:")]
    before = {slot: streaming_state(pool, slot) for slot in slots}
    orders = pool.redis.pubsub(ignore_subscribe_messages=True)
    orders.subscribe(in_pool(pool, keys.orders_of(api_key)))

    reply = requests.post(f"{pool.sim}/_sim/frames", params={"api_key": api_key}, json={"frames": MALFORMED},
                          timeout=10)
    # Every busy slot's connection got them; beat also keeps one spare slot connected, which may
    # be this key's (then it gets them too).
    assert len(slots) <= reply.json()["data"]["connections"] <= len(slots) + 1
    requests.post(f"{pool.sim}/_sim/order", params={"api_key": api_key}, json={"tradingsymbol": "INFY"}, timeout=5)
    order = wait_for(lambda: orders.get_message(timeout=0.2), 10, "the order update after the malformed frames")
    orders.close()
    assert decode(order["data"])["tradingsymbol"] == "INFY"
    pool.wait_ticking(tokens, timeout=5)

    def counted() -> bool:
        states = {slot: shard_state(pool, slot) for slot in slots}
        return all(sum(int(v) for k, v in s.items() if k.startswith("malformed_")) >= len(MALFORMED)
                   for s in states.values()) and states
    after = wait_for(counted, 5, "the malformed frames to be counted")
    for slot in slots:  # the same shard task, never reconnected, its feed never down
        assert {k: after[slot][k] for k in ("pid", "reconnects", "gap_secs")} == \
            {k: before[slot][k] for k in ("pid", "reconnects", "gap_secs")}
        assert after[slot]["state"] == "streaming"
    assert_kite_limits_kept(pool)


def test_a_token_refused_after_the_upgrade_in_either_form_marks_the_account_invalid(pool, universe):
    """Kite accepts new connections with the dead token, then refuses them: k1 with an error
    frame naming TokenException and a 1008 close carrying it, k2 with a bare 1008 close (which
    the shard must check with Kite's REST API). Each account is marked invalid within a bounded
    time, its shards stop, and nothing connects with the dead tokens again."""
    tokens = universe[:120]  # both accounts stream
    pool.want(tokens)
    pool.wait_ticking(tokens, timeout=20)
    assert {slot.rsplit(":", 1)[0] for slot in busy_slots(pool)} == set(ACCOUNTS)
    for api_key, signal_ in (("k1", "token"), ("k2", "bare")):
        requests.post(f"{pool.sim}/_sim/expire", params={"api_key": api_key, "after_upgrade": 1, "signal": signal_},
                      timeout=5)

    for api_key in ACCOUNTS:
        wait_for(lambda key=api_key: not token_valid(key), 15, f"{api_key}'s token to be marked invalid")
    wait_for(lambda: not any(pool.redis.exists(keys.shard_lease(f"{key}:{n}")) for key in ACCOUNTS
                             for n in range(PER_KEY)), 10, "every shard of the dead accounts to stop")
    tried = {key: seen["total"] for key, seen in pool.sim_stats()["connections_per_key"].items()}
    time.sleep(SUPERVISE_EVERY_SECS + 0.5)  # an observation window: beat supervised the slots meanwhile
    assert assignment.usable_slots(pool.redis) == {}
    assert {key: seen["total"] for key, seen in pool.sim_stats()["connections_per_key"].items()} == tried
    log_in_again(pool, *ACCOUNTS)
    assert_kite_limits_kept(pool)


def test_a_feed_slower_than_a_lease_never_gives_a_slot_two_connections(pool, universe):
    tokens = universe[:120]
    pool.want(tokens)
    pool.wait_ticking(tokens, timeout=20)
    owners = {slot: streaming_state(pool, slot)["owner"] for slot in busy_slots(pool)}

    pool.proxy.delay(SLOW_FEED_DELAY_SECS)  # a handshake now takes twice that: longer than a lease
    pool.proxy.reset()  # and every shard must reconnect through it
    time.sleep(SLOW_FEED_SECS)  # the fault lasts this long
    pool.proxy.heal()
    pool.proxy.reset()  # handshakes still crawling through it end now, not a few seconds later

    pool.wait_ticking(tokens, timeout=30)
    assert_kite_limits_kept(pool)
    assert {slot: shard_state(pool, slot)["owner"] for slot in owners} == owners  # nobody lost a lease


def test_redis_restarted_empty_never_gives_a_slot_two_connections_nor_an_older_generation(
        pool, universe, redis_server):
    tokens = universe[:120]
    pool.want(tokens)
    pool.wait_ticking(tokens, timeout=20)
    generations = {slot: int(streaming_state(pool, slot)["generation"]) for slot in busy_slots(pool)}

    redis_server.restart()  # every lease, generation counter, demand and assignment is gone
    pool.wait_ticking(tokens, timeout=40)  # demand comes back with the replica's next heartbeat

    for slot, generation in generations.items():
        assert int(streaming_state(pool, slot)["generation"]) > generation  # fencing never goes back
    assert_kite_limits_kept(pool)


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
