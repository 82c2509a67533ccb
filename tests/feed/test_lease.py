"""Leases against a real Redis server of this module's own: fencing tokens that never go back
when Redis loses its state, the holder's local knowledge of its lease, and the watchdog that
shuts an upstream connection down when that knowledge runs out, whatever the shard is blocked on."""

from __future__ import annotations

import threading
import time

import pytest

from tests.support.processes import free_port, wait_for
from tests.support.proxy import TcpProxy
from ticker.bus import keys
from ticker.bus.lease import LEASE_TTL_SECS, SAFETY_MARGIN_SECS, ShardLease
from ticker.feed.connection import KiteConnection
from ticker.feed.watchdog import POLL_SECS, LeaseWatchdog

pytestmark = pytest.mark.integration

SLOT = "lease-test:0"


@pytest.fixture(scope="module")
def client(private_redis):
    return private_redis


@pytest.fixture
def fresh(client):
    client.flushdb()
    return client


def history_lost(lease: ShardLease) -> bool:
    """Whether the lease may not be used for a connection for (nearly) a whole TTL."""
    return lease.connect_after - time.monotonic() > LEASE_TTL_SECS - 1


def test_fencing_tokens_never_go_backwards_when_redis_loses_its_state(fresh):
    first = ShardLease(fresh, SLOT, "w1:1")
    assert first.acquire() and history_lost(first)  # a fresh start: nothing known of any holder
    redis_ms = int(fresh.time()[0]) * 1000
    seeded = first.generation
    assert redis_ms - 5000 <= seeded <= redis_ms + 5000  # seeded from the server's clock, in ms
    first.release()
    second = ShardLease(fresh, SLOT, "w2:1")
    assert second.acquire() and not history_lost(second)  # the slot's history is intact
    assert second.generation == seeded + 1

    time.sleep(0.005)  # the clock moves on between leases (at most one a millisecond is the premise)
    fresh.flushdb()  # Redis restarted empty, flushed, or failed over without the key
    third = ShardLease(fresh, SLOT, "w3:1")
    assert third.acquire() and history_lost(third)
    assert third.generation > second.generation


def test_a_slot_first_leased_long_after_the_history_began_connects_at_once(fresh):
    fresh.set(keys.SHARD_HISTORY_SINCE, int(fresh.time()[0]) * 1000 - 60_000)  # held for a minute
    lease = ShardLease(fresh, "lease-test:1", "w1:1")
    assert lease.acquire() and lease.connect_after <= time.monotonic()

    fresh.delete(keys.SHARD_HISTORY_SINCE)  # lost just now: any slot may have a holder left
    assert ShardLease(fresh, "lease-test:2", "w1:1").acquire()
    later = ShardLease(fresh, "lease-test:3", "w1:1")
    assert later.acquire() and history_lost(later)  # not only the first slot after the loss


def test_the_holder_knows_how_long_its_lease_is_surely_its_own(fresh):
    lease = ShardLease(fresh, SLOT, "w1:1")
    assert lease.remaining() == 0 and not ShardLease(fresh, SLOT, "w0:1").renew()
    assert lease.acquire()
    assert LEASE_TTL_SECS - SAFETY_MARGIN_SECS - 0.5 < lease.remaining() <= LEASE_TTL_SECS - SAFETY_MARGIN_SECS
    assert fresh.pttl(keys.shard_lease(SLOT)) / 1000 > lease.remaining()  # Redis keeps it longer

    fresh.delete(keys.shard_lease(SLOT))  # lost (expired, taken over, Redis restarted)
    assert not lease.renew()
    assert lease.remaining() == 0 and lease.value is None
    assert not ShardLease(fresh, SLOT, "w2:1").renew()


def test_the_watchdog_shuts_a_connect_that_outlives_the_lease(fresh):
    silent = TcpProxy(("127.0.0.1", free_port())).start()  # accepts, then never answers
    silent.blackhole(new=True)
    lease = ShardLease(fresh, SLOT, "w1:1")
    assert lease.acquire()
    watchdog = LeaseWatchdog(lease).start()
    connection = KiteConnection(f"ws://{silent.url_host}", "k", "t", SLOT)
    failed: list[BaseException] = []
    try:
        lease.valid_until = time.monotonic() + 0.5  # as if the last renewal was 4.5 s ago
        watchdog.guard(connection)
        opener = threading.Thread(target=lambda: _open(connection, failed))
        started = time.monotonic()
        opener.start()  # the handshake would wait 30 s for an answer
        opener.join(5)
        assert not opener.is_alive() and failed
        assert time.monotonic() - started < 0.5 + POLL_SECS + 1
        wait_for(lambda: watchdog.closes == 1, 1, "the watchdog to count its close")
    finally:
        watchdog.stop()
        connection.close()
        silent.stop()


def _open(connection: KiteConnection, failed: list[BaseException]) -> None:
    try:
        connection.open(time.monotonic() + 30)
    except Exception as exc:  # noqa: BLE001  (whatever the aborted handshake raises is the point)
        failed.append(exc)


def test_the_watchdog_leaves_a_renewed_lease_alone(fresh):
    lease = ShardLease(fresh, SLOT, "w1:1")
    assert lease.acquire()
    watchdog = LeaseWatchdog(lease).start()
    aborted: list[bool] = []
    watchdog.guard(type("Probe", (), {"abort": lambda self: aborted.append(True) or True})())
    try:
        for _ in range(3):
            assert lease.renew()
            time.sleep(POLL_SECS * 2)  # the watchdog polls meanwhile
        assert aborted == [] and watchdog.closes == 0
    finally:
        watchdog.stop()
