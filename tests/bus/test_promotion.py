"""A replica promoted to master (what Sentinel does in a failover) holds what reached it, which
may be older than what the old master last said: the state that continuity rests on (the bus
epoch, the shards' lease history) must notice the promotion, never carry on as if nothing
happened. Two real Redis servers of the module's own, the second a replica of the first."""

from __future__ import annotations

import time

import pytest

from tests.support.processes import Process, free_port, port_open, stop_all, wait_for
from ticker.bus.connection import redis_client
from ticker.bus.epoch import BusEpoch
from ticker.bus.lease import LEASE_TTL_SECS, ShardLease

pytestmark = pytest.mark.integration


def _server(name: str, port: int, workdir, *extra: str) -> Process:
    process = Process(name, ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir), *extra], {}, workdir)
    wait_for(lambda: port_open(port) or not process.alive(), 10, f"{name} to listen")
    return process


@pytest.fixture
def pair(tmp_path):
    """(master, replica) clients; the replica in sync with the master."""
    master_port, replica_port = free_port(), free_port()
    servers = [_server("master", master_port, tmp_path, "--repl-diskless-sync-delay", "0"),
               _server("replica", replica_port, tmp_path, "--replicaof", "127.0.0.1", str(master_port))]
    master, replica = (redis_client(f"redis://127.0.0.1:{port}/0") for port in (master_port, replica_port))
    try:
        wait_for(lambda: replica.info("replication").get("master_link_status") == "up", 10, "the replica in sync")
        yield master, replica
    finally:
        stop_all(servers)


def history_lost(lease: ShardLease) -> bool:
    return lease.connect_after - time.monotonic() > LEASE_TTL_SECS - 1


def test_a_promoted_replica_begins_a_new_epoch_and_a_new_lease_history(pair):
    master, replica = pair
    epoch = BusEpoch(master).current()
    for slot in ("promo:1", "promo:2"):  # slots leased before, whose counters the replica has
        earlier = ShardLease(master, slot, "w0:1")
        assert earlier.acquire()
        earlier.release()
    kept = ShardLease(master, "promo:0", "w1:1")
    assert kept.acquire()
    master.wait(1, 2000)  # all of it reached the replica
    replica.execute_command("REPLICAOF", "NO", "ONE")  # promoted: Sentinel's failover does this

    # Written to the old master after the replica left it: lost with the failover, as the last
    # writes before a crash may be (replication is asynchronous).
    lost = ShardLease(master, "promo:1", "w1:1")
    assert lost.acquire()

    assert BusEpoch(replica).current() > epoch  # seqs start afresh, and clients are told
    holder = ShardLease(replica, "promo:0", "w1:1")  # kept's holder, its client now at the new master
    holder.value = kept.value
    assert holder.renew()  # a lease that survived the failover is renewed there: streaming goes on

    taker = ShardLease(replica, "promo:1", "w2:1")
    assert taker.acquire()  # the lost lease is not on the new master: the slot is free
    assert taker.generation > lost.generation  # yet fencing tokens never go backwards
    assert history_lost(taker)  # and no connection while the lost lease's holder may think it owns one

    later = ShardLease(replica, "promo:2", "w2:1")
    assert later.acquire() and history_lost(later)  # every slot, not only the first after the failover


def test_the_history_of_the_same_server_carries_on(pair):
    master, _ = pair
    first = ShardLease(master, "same:0", "w1:1")
    assert first.acquire() and history_lost(first)  # a fresh start
    generation = first.generation
    first.release()
    second = ShardLease(master, "same:0", "w2:1")
    assert second.acquire() and not history_lost(second)
    assert second.generation == generation + 1
