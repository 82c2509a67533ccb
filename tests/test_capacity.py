"""The capacity model (ticker/capacity.py): pure logic, checked against hand-worked figures."""

from __future__ import annotations

import pytest

from ticker.capacity import ReplicaCost, Target, Units, fit_replica_cost, plan

UNITS = Units(replica=ReplicaCost(read_us=0.0, frame_us=20.0, delivery_us=1.0), idle_kib_per_connection=36.0,
              replica_base_mib=100.0, shard_ticks_per_cpu_sec=300_000.0, redis_ingest_us_per_tick=6.0,
              redis_message_us=2.0, redis_kib_us=0.5, tick_bytes=512.0,
              client_tick_bytes=400.0)


def test_the_fit_recovers_the_costs_of_reading_framing_and_delivering():
    truth = ReplicaCost(read_us=8.0, frame_us=15.0, delivery_us=1.5)
    loads = ((10_000, 200, 10_000), (10_000, 20_000, 100_000), (10_000, 10_000, 400_000), (20_000, 20_000, 400_000))
    fitted = fit_replica_cost([(*load, truth.cpu_secs(*load)) for load in loads])
    assert (fitted.read_us, fitted.frame_us, fitted.delivery_us) == pytest.approx((8.0, 15.0, 1.5))


def test_the_fit_needs_loads_of_different_shapes():
    with pytest.raises(ValueError):  # the same ticks read and 20 deliveries a frame in each
        fit_replica_cost([(10_000, 1000, 20_000, 0.1), (20_000, 2000, 40_000, 0.2), (30_000, 3000, 60_000, 0.3)])
    with pytest.raises(ValueError):
        fit_replica_cost([(10_000, 1000, 20_000, 0.1)])


def test_reading_every_tick_takes_its_share_of_each_replica():
    reader = Units(**{**UNITS.__dict__, "replica": ReplicaCost(read_us=10.0, frame_us=20.0, delivery_us=1.0)})
    # 10,000 ticks/s × 10 µs = 0.1 of a core read, leaving 0.6 for clients at 180 µs each.
    assert plan(Target(clients=1_000_000), reader).clients_per_replica == 3_333


def test_kite_keys_follow_kites_limits():
    assert (plan(Target(instruments=5_000), UNITS).kite_connections, plan(Target(instruments=5_000), UNITS).kite_keys) \
        == (2, 1)
    nine_thousand_and_one = plan(Target(instruments=9_001), UNITS)
    assert (nine_thousand_and_one.kite_connections, nine_thousand_and_one.kite_keys) == (4, 2)
    assert nine_thousand_and_one.shard_processes == 4


def test_web_replicas_from_the_cost_of_a_client():
    # 50 tokens at 2 ticks/s over 2 connections: 4 frames (80 µs) and 100 deliveries (100 µs) a
    # second per client; a replica at 70% of a core holds 700,000 / 180 = 3,888 of them.
    p = plan(Target(clients=1_000_000), UNITS)
    assert p.clients_per_replica == 3_888
    assert p.web_replicas == 258  # ceil(1,000,000 / 3,888)
    assert p.deliveries_per_sec == 100_000_000 and p.frames_per_sec == 4_000_000
    assert p.replica_memory_mib == pytest.approx(100 + 3_888 * 36 / 1024)
    assert p.replica_egress_mbit_per_sec == pytest.approx(3_888 * 100 * 400 * 8 / 1e6)


def test_a_replica_never_plans_past_its_connection_limit():
    cheap = Units(**{**UNITS.__dict__, "replica": ReplicaCost(0.0, 0.1, 0.01)})
    assert plan(Target(clients=100_000), cheap).clients_per_replica == 20_000


def test_redis_carries_every_batch_to_every_replica():
    p = plan(Target(clients=1_000_000), UNITS)
    assert p.redis_batches_per_sec == 2 * 2 * 64  # 2 connections, 2 frames/s, a batch per bucket
    assert p.redis_messages_out_per_sec == 256 * 258
    assert p.redis_mib_out_per_sec == pytest.approx(10_000 * 512 * 258 / 2**20)
    cores = (10_000 * 6.0 + 256 * 258 * 2.0 + 10_000 * (512 / 1024) * 258 * 0.5) / 1e6  # ingest, messages, KiB
    assert p.redis_cores == pytest.approx(cores)
    assert p.redis_servers == -(-cores // 0.7)
