"""The one Redis client factory: bounded pools that make waiting explicit, and connections that
notice a dead peer.

Every process takes its clients from here. A pool holds at most `REDIS_MAX_CONNECTIONS`
connections; a caller that finds them all busy waits up to `REDIS_POOL_WAIT_SECS` for one
(a crowd queues instead of failing), and then gets `PoolExhausted`, which a web replica turns
into the documented `server_busy` code. Work a process does for itself (a replica's demand
heartbeat, its stats, its upstream watch) takes a pool of its own (`purpose="background"`), so
a crowd of requests can never starve it.

A connection whose peer vanished without a FIN or an RST (a NAT or firewall that forgot it) is
noticed by the first command on it: commands time out after `SOCKET_TIMEOUT_SECS` and are
retried on a fresh connection; idle connections are checked before use
(`HEALTH_CHECK_SECS`), and the kernel's keepalive and user timeout bound what TCP alone waits.
Long-lived pub/sub connections need an application-level check on top of this, since a
subscribed connection legitimately receives nothing for long stretches:
`ticker.bus.liveness.PubSubLiveness`.
"""

from __future__ import annotations

import socket
from functools import lru_cache

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.driver_info import DriverInfo
from redis.retry import Retry

from ticker.config import Config

SOCKET_CONNECT_TIMEOUT_SECS = 2.0
SOCKET_TIMEOUT_SECS = 5.0  # no command of ours takes this long; a dead peer costs this much at most
HEALTH_CHECK_SECS = 15  # an idle pooled connection gets a PING before it is used again
BACKGROUND_MAX_CONNECTIONS = 8  # a replica's own loops: a handful at a time, never the crowd's
PROBE_TIMEOUT_SECS = 1.0  # a health probe answers quickly or reports Redis unreachable

# Linux TCP options: probes after 5 s of silence, every 2 s, 3 unanswered means dead; and data
# sent but unacknowledged for 10 s ends the connection (TCP_USER_TIMEOUT, in milliseconds).
_KEEPALIVE_OPTIONS = {
    option: value
    for name, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3), ("TCP_USER_TIMEOUT", 10_000))
    if (option := getattr(socket, name, None)) is not None
}


# What each connection tells Redis about its client (CLIENT SETINFO), worked out once: redis-py
# (8.1) otherwise reads its package metadata for every new connection, which cost a crowd of new
# clients (and so new pooled connections) milliseconds each.
_DRIVER_INFO = DriverInfo()


class PoolExhausted(redis.ConnectionError):
    """Every connection of the pool stayed busy for the whole wait: the process is overloaded.
    Retrying later (with backoff) is the right answer, not an internal error."""


class WaitingConnectionPool(redis.BlockingConnectionPool):
    """redis-py's BlockingConnectionPool, raising `PoolExhausted` when the wait runs out.

    redis-py (8.x) raises a plain `ConnectionError("No connection available.")` then, which
    cannot be told apart from a dead server by its type; tests/bus/test_connection.py checks
    that this still holds."""

    def get_connection(self, *args, **kwargs):
        try:
            return super().get_connection(*args, **kwargs)
        except redis.ConnectionError as exc:
            if str(exc) == "No connection available.":
                raise PoolExhausted(f"all {self.max_connections} Redis connections stayed busy for "
                                    f"{self.timeout:g}s") from exc
            raise


def connection_options() -> dict:
    """The socket options every connection of the service gets (also the tick listener's own)."""
    return {
        "socket_connect_timeout": SOCKET_CONNECT_TIMEOUT_SECS,
        "socket_timeout": SOCKET_TIMEOUT_SECS,
        "socket_keepalive": True,
        "socket_keepalive_options": dict(_KEEPALIVE_OPTIONS),
        "health_check_interval": HEALTH_CHECK_SECS,
        "retry_on_timeout": True,
        "driver_info": _DRIVER_INFO,
    }


PURPOSES = ("requests", "background", "probe")


@lru_cache(maxsize=16)
def redis_client(url: str, purpose: str = "requests") -> redis.Redis:
    """A client per URL, purpose and process, decoding replies to `str`.

    `purpose` "requests" (the default) shares `Config.REDIS_MAX_CONNECTIONS` connections among
    everything a process does on behalf of others; "background" gets a small pool of its own for
    the process's own periodic work; "probe" (health checks) a small pool whose commands give
    up after `PROBE_TIMEOUT_SECS`, once, so a health check answers within seconds whatever
    Redis does. Other commands retry on a fresh connection after a dropped or silent one, so a
    restarted Redis costs the caller one error at most, never a restart of the process. Raises
    ValueError for an unknown purpose; commands raise `PoolExhausted` after waiting
    `Config.REDIS_POOL_WAIT_SECS` for a free connection, and `redis.RedisError` otherwise."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown purpose {purpose!r}: one of {PURPOSES}")
    options = connection_options()
    size, wait = Config.REDIS_MAX_CONNECTIONS, Config.REDIS_POOL_WAIT_SECS
    if purpose == "background":
        size = BACKGROUND_MAX_CONNECTIONS
    elif purpose == "probe":
        size, wait = BACKGROUND_MAX_CONNECTIONS, PROBE_TIMEOUT_SECS
        options.update(socket_connect_timeout=PROBE_TIMEOUT_SECS, socket_timeout=PROBE_TIMEOUT_SECS,
                       retry_on_timeout=False, retry=Retry(NoBackoff(), 0))
    pool = WaitingConnectionPool.from_url(url, max_connections=size, timeout=wait, decode_responses=True, **options)
    return redis.Redis(connection_pool=pool)


CLUSTER_SCHEME = "redis+cluster://"
CLUSTER_MAX_CONNECTIONS_PER_NODE = 16
TICK_BUS_TIMEOUT_SECS = 1.0  # a shard's flushes and a replica's snapshot reads


def cluster_seeds(url: str) -> list[tuple[str, int]]:
    """The (host, port) seeds of a `redis+cluster://host:port[,host:port...]` URL. Raises
    ValueError for any other URL: the tick bus has one way to name a cluster."""
    if not url.startswith(CLUSTER_SCHEME):
        raise ValueError(f"TICK_BUS_URL must start with {CLUSTER_SCHEME}: {url!r}")
    seeds = []
    for seed in url.removeprefix(CLUSTER_SCHEME).split("/", 1)[0].split(","):
        host, _, port = seed.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"a cluster seed is host:port, not {seed!r} (in {url!r})")
        seeds.append((host, int(port)))
    return seeds


@lru_cache(maxsize=4)
def tick_bus_client(url: str) -> RedisCluster:
    """A Redis Cluster client for the tick bus (`Config.TICK_BUS_URL`), decoding replies to
    `str`, with the socket options of `redis_client`. redis-py's RedisCluster follows MOVED and
    ASK, refreshes its slot map after them and after a connection error (a failover), and
    retries the command on the node now serving the slot. Raises ValueError for a malformed URL;
    commands raise `redis.RedisError` (ClusterDownError while a failover is under way)."""
    options = connection_options()
    options.pop("health_check_interval")  # per-node pools: checked by the retries instead
    # A flush's scripts take well under a millisecond: a node silent for a second is taken for
    # failed (slot map refreshed, its buckets' ticks counted as lost) rather than stalling the
    # shard's loop for SOCKET_TIMEOUT_SECS per try.
    options.update(socket_connect_timeout=TICK_BUS_TIMEOUT_SECS, socket_timeout=TICK_BUS_TIMEOUT_SECS)
    nodes = [ClusterNode(host, port) for host, port in cluster_seeds(url)]
    # require_full_coverage off: while a master fails over, the other masters' buckets go on.
    return RedisCluster(startup_nodes=nodes, decode_responses=True, require_full_coverage=False,
                        max_connections=CLUSTER_MAX_CONNECTIONS_PER_NODE, **options)
