"""Prometheus metrics of a web replica, defined in one place.

Units are in the names, and no label is ever per instrument or per user (bounded
cardinality). Shard figures live in Redis (each shard reports its state there every second)
and are exported by a collector, since shard tasks run in short-lived Celery children.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Ingest (shard parsed the tick) to emit (this replica handed it to Socket.IO).
DELIVERY_LATENCY_SECONDS = Histogram(
    "ticker_delivery_latency_seconds",
    "Time from a tick's ingest by its shard to its emit by this replica",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
TICKS_DELIVERED = Counter("ticker_ticks_delivered_total", "Tick deliveries (one tick reaching one client)")
FRAMES_SENT = Counter("ticker_frames_sent_total", "Socket.IO `ticks` frames sent to clients")
TICKS_CONFLATED = Counter("ticker_ticks_conflated_total", "Ticks replaced by a newer tick before a slow client read them")
TICKS_DROPPED = Counter("ticker_ticks_dropped_total", "Ticks not delivered (client disconnected for being too slow)")
CONNECTIONS_REJECTED = Counter(
    "ticker_connections_rejected_total", "Socket.IO connections refused, by reason code", ["reason"]
)
CLIENTS_CONNECTED = Gauge("ticker_clients_connected", "Socket.IO clients connected to this replica")
SUBSCRIPTIONS = Gauge("ticker_subscriptions", "Token subscriptions held by this replica's clients")
