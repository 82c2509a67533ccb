"""The capacity plan of docs/CAPACITY.md, computed by ticker/capacity.py from the per-unit figures
measured on this project's benchmark machine (each figure's source beside it).

    .venv/bin/python -m bench.capacity [--clients 1000000] [--instruments 5000] [--tick-rate 2]
        [--tokens-per-client 50] [--frame-us F] [--read-us R] [--delivery-us D]

Prints the plan as the Markdown table docs/CAPACITY.md shows. Pass your own figures (measured on
your hardware with `make bench-replicas` and `make bench-redis`) to plan for it.
"""

from __future__ import annotations

import argparse

from ticker.capacity import Plan, ReplicaCost, Target, Units, plan

# Measured here (2 cores, AMD EPYC, shared with other work; docs/CAPACITY.md, "The figures").
MEASURED = Units(
    # bench.replicas: least squares over the eleven one-replica runs of its three rounds
    # (docs/CAPACITY.md, "The figures"; BENCHMARKS.md, "Replicas on one host").
    replica=ReplicaCost(read_us=16.9, frame_us=39.4, delivery_us=0.40),
    # bench.fanout --sizes "" --modes gevent --idle 5000 on this machine (35.7 KiB at 10,000 in
    # BENCHMARKS.md, "Fan-out"): the higher.
    idle_kib_per_connection=39.8,
    replica_base_mib=115.0,
    # bench.ingest, quote mode, parse + fenced publish (BENCHMARKS.md, "The hot path before and
    # after": the lower of that section's and "Ingest"'s figures).
    shard_ticks_per_cpu_sec=119_769.0,
    # bench.redis_fanout (BENCHMARKS.md, "Redis: the tick path's cost").
    redis_ingest_us_per_tick=3.4,
    redis_message_us=0.0,
    redis_kib_us=1.45,
    tick_bytes=410.0,  # bench.redis_fanout: 262 KiB per subscriber for a frame of 640 quote ticks
    client_tick_bytes=367.0,  # a quote tick's JSON with seq, ingest_ts and epoch (ticker.bus.ticks.encode)
)


def rows(target: Target, units: Units, result: Plan) -> list[tuple[str, str, str]]:
    """(part, how many, why) for each part of the plan."""
    return [
        ("Kite API keys", f"{result.kite_keys}",
         f"{target.instruments:,} instruments / {units.tokens_per_connection:,} per connection = "
         f"{result.kite_connections} connections; {units.connections_per_key} connections per key"),
        ("shard processes", f"{result.shard_processes}",
         f"one per Kite connection; {result.shard_cores:.2f} of a core in all "
         f"({target.instruments * target.ticks_per_sec:,.0f} ticks/s at {units.shard_ticks_per_cpu_sec:,.0f} "
         "per CPU-second)"),
        ("web replicas (cores)", f"{result.web_replicas:,}",
         f"{result.clients_per_replica:,} clients each at {units.headroom:.0%} of a core; "
         f"{result.deliveries_per_sec:,.0f} deliveries/s and {result.frames_per_sec:,.0f} frames/s in all; "
         f"about {result.replica_memory_mib:,.0f} MiB and {result.replica_egress_mbit_per_sec:,.0f} Mbit/s "
         "to clients each"),
        ("Redis tick shards", f"{result.redis_servers}",
         f"{result.redis_cores:.2f} cores of Redis at {units.headroom:.0%} each: "
         f"{result.redis_batches_per_sec:,.0f} batches/s published, {result.redis_messages_out_per_sec:,.0f} "
         f"messages/s and {result.redis_mib_out_per_sec:,.0f} MiB/s out to the replicas"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=Target.clients)
    parser.add_argument("--instruments", type=int, default=Target.instruments)
    parser.add_argument("--tick-rate", type=float, default=Target.ticks_per_sec)
    parser.add_argument("--tokens-per-client", type=int, default=Target.tokens_per_client)
    parser.add_argument("--read-us", type=float, default=MEASURED.replica.read_us)
    parser.add_argument("--frame-us", type=float, default=MEASURED.replica.frame_us)
    parser.add_argument("--delivery-us", type=float, default=MEASURED.replica.delivery_us)
    args = parser.parse_args()
    target = Target(args.clients, args.instruments, args.tick_rate, args.tokens_per_client)
    units = Units(**{**MEASURED.__dict__, "replica": ReplicaCost(args.read_us, args.frame_us, args.delivery_us)})
    result = plan(target, units)
    print(f"Target: {target.clients:,} clients, {target.instruments:,} instruments at {target.ticks_per_sec:g} "
          f"ticks/s, {target.tokens_per_client} tokens a client.\n")
    print("| part | how many | from |\n| --- | ---: | --- |")
    for part, count, why in rows(target, units, result):
        print(f"| {part} | {count} | {why} |")


if __name__ == "__main__":
    main()
