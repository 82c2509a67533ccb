"""Capacity planning: how many Kite keys, shard processes, web replicas and Redis servers a target
needs, from figures measured per unit (pure logic, no I/O; docs/CAPACITY.md explains the figures
and where the model stops being true).

The model, per second:
- upstream: `instruments` over Kite connections of `tokens_per_connection` (3000), connections over
  keys of `connections_per_key` (3); one shard process per connection slot; the shard's CPU is
  ticks / `shard_ticks_per_cpu_sec`.
- web: each client receives `tokens_per_client` × `ticks_per_sec` ticks (deliveries) in frames;
  a replica sends a client one frame per tick burst that carries any of its tokens, and Kite (like
  the simulator) sends each connection's ticks as a burst, so a client gets `ticks_per_sec` ×
  min(`tokens_per_client`, connections) frames. A replica's CPU is `read_us` per tick it reads
  from Redis (all of them, once it has a few hundred clients), `frame_us` per frame and
  `delivery_us` per delivery (ReplicaCost, fitted to measured runs); replicas are planned to run
  at `headroom` of a core, and at most `max_connections_per_replica` clients each.
- Redis: each published tick costs `redis_ingest_us_per_tick` (the shard's fenced Lua call:
  publish and snapshot); each batch costs `redis_message_us` per subscriber that receives it plus
  `redis_kib_us` per KiB written to it. Every replica that holds more than a few hundred clients
  subscribes to every bucket (50 tokens a client spread over 64 buckets), so every batch goes to
  every replica: Redis's output grows with replicas × ticks, not with clients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

TICK_BUCKETS = 64  # ticker.bus.keys.TICK_BUCKETS: a shard frame publishes one batch per bucket it touches


@dataclass(frozen=True)
class Target:
    """What to serve: connected clients, instruments streamed, ticks per second per instrument,
    and instrument tokens per client."""

    clients: int = 1_000_000
    instruments: int = 5_000
    ticks_per_sec: float = 2.0
    tokens_per_client: int = 50


@dataclass(frozen=True)
class ReplicaCost:
    """A web replica's CPU: µs per tick it reads from Redis (every replica reads every tick of
    the buckets its clients want, whatever its clients), per frame it sends, per tick it delivers."""

    read_us: float
    frame_us: float
    delivery_us: float

    def cpu_secs(self, ticks_read: float, frames: float, deliveries: float) -> float:
        return (ticks_read * self.read_us + frames * self.frame_us + deliveries * self.delivery_us) / 1e6


def least_squares(rows: list[tuple[float, ...]], ys: list[float]) -> list[float]:
    """x minimising |A x - y| (no intercept) by the normal equations; ValueError when the rows
    do not determine x (too few, or one a combination of the others)."""
    n = len(rows[0]) if rows else 0
    if len(rows) < n or n == 0:
        raise ValueError(f"{len(rows)} samples cannot determine {n} costs")
    # Each column scaled to unit size first: ticks and CPU-seconds differ by six orders of magnitude.
    scale = [max(abs(r[j]) for r in rows) or 1.0 for j in range(n)]
    a = [[sum(r[i] / scale[i] * r[j] / scale[j] for r in rows) for j in range(n)]
         + [sum(r[i] / scale[i] * y for r, y in zip(rows, ys, strict=True))] for i in range(n)]
    for col in range(n):  # Gauss-Jordan with partial pivoting
        pivot = max(range(col, n), key=lambda i: abs(a[i][col]))
        if abs(a[pivot][col]) < 1e-9:
            raise ValueError("the samples do not separate the costs: vary the load's shape")
        a[col], a[pivot] = a[pivot], a[col]
        for i in range(n):
            if i != col:
                factor = a[i][col] / a[col][col]
                a[i] = [x - factor * y for x, y in zip(a[i], a[col], strict=True)]
    return [a[i][n] / a[i][i] / scale[i] for i in range(n)]


def fit_replica_cost(samples: list[tuple[float, float, float, float]]) -> ReplicaCost:
    """ReplicaCost by least squares over `samples` of (ticks read, frames, deliveries, CPU-seconds).
    Needs three samples of different shapes (deliveries per frame, ticks read per frame); raises
    ValueError otherwise."""
    read, frame, delivery = least_squares([s[:3] for s in samples], [s[3] for s in samples])
    return ReplicaCost(read * 1e6, frame * 1e6, delivery * 1e6)


@dataclass(frozen=True)
class Units:
    """Per-unit figures (docs/CAPACITY.md says where each was measured) and Kite's limits."""

    replica: ReplicaCost
    idle_kib_per_connection: float
    replica_base_mib: float
    shard_ticks_per_cpu_sec: float
    redis_ingest_us_per_tick: float
    redis_message_us: float
    redis_kib_us: float
    tick_bytes: float  # a tick in a Redis batch: its JSON and its row
    client_tick_bytes: float  # a tick's JSON in a client's frame
    tokens_per_connection: int = 3000
    connections_per_key: int = 3
    max_connections_per_replica: int = 20_000  # ticker.config MAX_CONNECTIONS
    headroom: float = 0.7  # plan every core to run at this share, for bursts and the market open


@dataclass(frozen=True)
class Plan:
    """What a target needs, and the per-second loads behind it."""

    kite_keys: int
    kite_connections: int
    shard_processes: int
    shard_cores: float
    clients_per_replica: int
    web_replicas: int
    replica_memory_mib: float
    deliveries_per_sec: float
    frames_per_sec: float
    replica_egress_mbit_per_sec: float  # ticks to clients (their JSON), one replica's
    redis_batches_per_sec: float  # PUBLISHes of tick batches
    redis_messages_out_per_sec: float  # batches × the replicas receiving each
    redis_mib_out_per_sec: float
    redis_cores: float  # Redis CPU the tick path needs, in cores
    redis_servers: int  # tick-bucket shards, each at `headroom` of its one core


def plan(target: Target, units: Units) -> Plan:
    """The plan for `target` with `units`; see the module docstring for the model."""
    connections = math.ceil(target.instruments / units.tokens_per_connection)
    keys = math.ceil(connections / units.connections_per_key)
    ticks = target.instruments * target.ticks_per_sec
    frames_per_client = target.ticks_per_sec * min(target.tokens_per_client, connections)
    deliveries_per_client = target.tokens_per_client * target.ticks_per_sec
    client_us = units.replica.cpu_secs(0, frames_per_client, deliveries_per_client) * 1e6
    reading = units.replica.cpu_secs(ticks, 0, 0)  # of a core: every replica reads every tick
    per_replica = min(units.max_connections_per_replica, int((units.headroom - reading) * 1e6 / client_us))
    replicas = math.ceil(target.clients / per_replica)
    tokens_per_connection = target.instruments / connections
    batches = connections * target.ticks_per_sec * min(TICK_BUCKETS, tokens_per_connection)
    messages_out = batches * replicas
    kib_out = ticks * units.tick_bytes / 1024 * replicas
    redis_cores = (ticks * units.redis_ingest_us_per_tick + messages_out * units.redis_message_us
                   + kib_out * units.redis_kib_us) / 1e6
    return Plan(
        kite_keys=keys, kite_connections=connections, shard_processes=connections,
        shard_cores=ticks / units.shard_ticks_per_cpu_sec,
        clients_per_replica=per_replica, web_replicas=replicas,
        replica_memory_mib=units.replica_base_mib + per_replica * units.idle_kib_per_connection / 1024,
        deliveries_per_sec=target.clients * deliveries_per_client, frames_per_sec=target.clients * frames_per_client,
        replica_egress_mbit_per_sec=per_replica * deliveries_per_client * units.client_tick_bytes * 8 / 1e6,
        redis_batches_per_sec=batches, redis_messages_out_per_sec=messages_out, redis_mib_out_per_sec=kib_out / 1024,
        redis_cores=redis_cores, redis_servers=max(1, math.ceil(redis_cores / units.headroom)),
    )
