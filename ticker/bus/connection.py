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

`REDIS_URL` names one server or a Redis Sentinel deployment (`ticker.config.SentinelUrl`). Behind
Sentinel, every new connection asks the sentinels where the master is now (redis-py's
`SentinelConnectionPool`), so after a failover the service reconnects to the promoted replica by
itself: a connection to the old master fails (it is dead, or answers READONLY once demoted) and
its replacement goes to the new one. A pool in use also asks once a second, so an old master that
stays up (cut off from the sentinels) is left too; long-lived subscribers, whose connections are
never given back, call `check_master` on their own. `connection_pool(url, ...)` is where a URL
becomes a pool of either kind; `pool_like(pool, ...)` gives another pool to wherever a pool
connects; `celery_broker(url)` is kombu's spelling of the same.

A `rediss://` URL (a managed Redis over TLS) gets the certificate options of `tls_options`, here
and wherever else the service talks to Redis (the Celery broker, the Socket.IO message queue).
"""

from __future__ import annotations

import socket
import time
from functools import lru_cache
from urllib.parse import quote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.driver_info import DriverInfo
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from ticker.config import Config, SentinelUrl

SOCKET_CONNECT_TIMEOUT_SECS = 2.0
SOCKET_TIMEOUT_SECS = 5.0  # no command of ours takes this long; a dead peer costs this much at most
HEALTH_CHECK_SECS = 15  # an idle pooled connection gets a PING before it is used again
BACKGROUND_MAX_CONNECTIONS = 8  # a replica's own loops: a handful at a time, never the crowd's
PROBE_TIMEOUT_SECS = 1.0  # a health probe answers quickly or reports Redis unreachable
MASTER_CHECK_SECS = 1.0  # behind Sentinel: how often a pool in use asks where the master is
MASTER_STALE_SECS = 5.0  # an answer older than this says nothing about where the master is now

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


# The master each Sentinel deployment's pools last heard of in this process, and when:
# (service name, sentinel addresses) -> ((host, port), monotonic time). Read by `master_moved`.
_MASTERS: dict[tuple, tuple[tuple[str, int], float]] = {}


class WaitingSentinelConnectionPool(SentinelConnectionPool, WaitingConnectionPool):
    """redis-py's SentinelConnectionPool (each new connection goes to the master the sentinels
    name now; idle connections to a master that changed are dropped, a demoted one's READONLY
    reply drops the connection) with `WaitingConnectionPool`'s bounded wait and `PoolExhausted`.

    redis-py asks the sentinels only when it opens a connection, so a busy pool would keep
    reusing its connections to an old master that is still up (cut off from the sentinels, not
    yet demoted) for as long as that lasts, and lose every write made there. This pool also asks
    at most once every MASTER_CHECK_SECS when a connection is taken: after a failover its
    connections move within about that, whatever became of the old master."""

    def __init__(self, service_name, sentinel_manager, **kwargs):
        super().__init__(service_name, sentinel_manager, **kwargs)
        sentinels = (client.connection_pool.connection_kwargs for client in sentinel_manager.sentinels)
        self.deployment = (service_name, tuple(sorted((kw["host"], kw["port"]) for kw in sentinels)))
        self.master_checked = float("-inf")

    def get_connection(self, *args, **kwargs):
        self.check_master()
        return super().get_connection(*args, **kwargs)

    def check_master(self) -> None:
        """Ask the sentinels where the master is, unless asked within MASTER_CHECK_SECS. When it
        moved, idle connections are dropped now and busy ones when given back (redis-py)."""
        now = time.monotonic()
        if now - self.master_checked < MASTER_CHECK_SECS:
            return
        self.master_checked = now
        try:
            address = self.get_master_address()
        except redis.ConnectionError:  # no sentinel can say now: a dead master shows itself anyway
            return
        _MASTERS[self.deployment] = (tuple(address), now)


class MasterMoved(redis.ConnectionError):
    """A long-lived connection's server is no longer its Sentinel deployment's master."""


def check_master(connection: redis.Connection) -> None:
    """Raise MasterMoved when `master_moved(connection)`."""
    if master_moved(connection):
        raise MasterMoved(f"{connection.host}:{connection.port} is no longer the master the sentinels name")


def master_moved(connection: redis.Connection) -> bool:
    """True when `connection` goes to a server that is no longer its Sentinel deployment's master,
    as this process's pools last heard (within MASTER_STALE_SECS); False otherwise, and always for
    a connection to one server. No I/O: for long-lived (pub/sub) connections, which are never
    given back to their pool, to be given up and opened again at the new master."""
    proxy = getattr(connection, "connection_pool", None)  # a Sentinel-managed connection's pool
    pool = proxy.connection_pool_ref() if proxy is not None else None
    if pool is None or connection.host is None:
        return False
    known = _MASTERS.get(pool.deployment)
    if known is None or time.monotonic() - known[1] > MASTER_STALE_SECS:
        return False
    return known[0] != (connection.host, int(connection.port))


def connection_pool(url: str, max_connections: int, timeout: float, **options) -> WaitingConnectionPool:
    """A bounded pool of connections to what `url` names (`Config.REDIS_URL`'s forms): one
    server (`redis://`, `rediss://`, `unix://`, read by redis-py's `from_url`), or the master of
    a Sentinel deployment (`redis+sentinel://`). A caller finding `max_connections` busy waits
    up to `timeout` seconds, then gets `PoolExhausted`. `options` are connection options
    (`connection_options()` and the like); behind Sentinel, their `socket_*` ones apply to the
    sentinels too. Raises ValueError for a malformed URL."""
    sentinel = SentinelUrl.parse(url)
    if sentinel is None:
        return WaitingConnectionPool.from_url(url, max_connections=max_connections, timeout=timeout, **options)
    # Each sentinel is asked once per lookup: the next sentinel is the retry. (redis-py's default
    # of three retries per sentinel would let one silent sentinel cost four connect timeouts.)
    sentinel_options = {key: value for key, value in options.items() if key.startswith("socket_")}
    manager = Sentinel(sentinel.sentinels, sentinel_kwargs={**sentinel_options, "retry": Retry(NoBackoff(), 0)})
    credentials = {"username": sentinel.username, "password": sentinel.password}
    return WaitingSentinelConnectionPool(sentinel.master_name, manager, max_connections=max_connections,
                                         timeout=timeout, db=sentinel.db, **credentials, **options)


def pool_like(pool: WaitingConnectionPool, max_connections: int, **overrides) -> WaitingConnectionPool:
    """A new pool of at most `max_connections` to wherever `pool`'s connections go (the same
    server, or the same Sentinel deployment's master), with `pool`'s connection options but for
    `overrides`; callers wait for a connection as long as `pool`'s do."""
    options = {**pool.connection_kwargs, **overrides}
    options.pop("connection_pool", None)  # a Sentinel pool's own back-reference: the new pool sets its own
    sizes = {"max_connections": max_connections, "timeout": pool.timeout, "connection_class": pool.connection_class}
    if isinstance(pool, SentinelConnectionPool):
        return WaitingSentinelConnectionPool(pool.service_name, pool.sentinel_manager, **sizes, **options)
    return WaitingConnectionPool(**sizes, **options)


def celery_broker(url: str) -> tuple[str, dict]:
    """Celery's `broker_url` for `url` (a `Config.REDIS_URL`), and the transport options it
    needs beside the others: the URL itself and none for one server; for a Sentinel deployment
    kombu's form, `sentinel://[[username]:password@]host:port/<db>` once per sentinel joined by
    `;`, with the master's name in `master_name` (kombu's redis transport, "sentinel"), and the
    options kombu (and Flower) ask the sentinels with: each once per lookup, as `connection_pool`."""
    sentinel = SentinelUrl.parse(url)
    if sentinel is None:
        return url, {}
    credentials = ""
    if sentinel.username or sentinel.password:
        credentials = f"{quote(sentinel.username or '', safe='')}:{quote(sentinel.password or '', safe='')}@"
    hosts = (f"[{host}]" if ":" in host else host for host, _ in sentinel.sentinels)
    urls = [f"sentinel://{credentials}{host}:{port}/{sentinel.db}"
            for host, (_, port) in zip(hosts, sentinel.sentinels, strict=True)]
    asking = {"socket_connect_timeout": SOCKET_CONNECT_TIMEOUT_SECS, "socket_timeout": SOCKET_TIMEOUT_SECS,
              "retry": Retry(NoBackoff(), 0)}
    return ";".join(urls), {"master_name": sentinel.master_name, "sentinel_kwargs": asking}


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


def tls_options(url: str) -> dict[str, str]:
    """redis-py's TLS keywords for `url`: for a `rediss://` URL, `ssl_cert_reqs` ("required",
    "optional" or "none") and those of `ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile` (file
    paths) that are set (Config.REDIS_SSL_*); {} for any other URL. kombu's Redis transport takes
    the same dict as Celery's `broker_use_ssl`. A URL's own `ssl_*` query parameters (redis-py
    and kombu both read them) override these."""
    if urlsplit(url).scheme != "rediss":
        return {}
    options = {"ssl_cert_reqs": Config.REDIS_SSL_CERT_REQS}
    files = {"ssl_ca_certs": Config.REDIS_SSL_CA_CERTS, "ssl_certfile": Config.REDIS_SSL_CERTFILE,
             "ssl_keyfile": Config.REDIS_SSL_KEYFILE}
    return options | {key: path for key, path in files.items() if path}


PURPOSES = ("requests", "background", "probe")


@lru_cache(maxsize=16)
def redis_client(url: str, purpose: str = "requests") -> redis.Redis:
    """A client per URL (`Config.REDIS_URL`'s forms: `connection_pool`), purpose and process,
    decoding replies to `str`.

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
    options = connection_options() | tls_options(url)
    size, wait = Config.REDIS_MAX_CONNECTIONS, Config.REDIS_POOL_WAIT_SECS
    if purpose == "background":
        size = BACKGROUND_MAX_CONNECTIONS
    elif purpose == "probe":
        size, wait = BACKGROUND_MAX_CONNECTIONS, PROBE_TIMEOUT_SECS
        options.update(socket_connect_timeout=PROBE_TIMEOUT_SECS, socket_timeout=PROBE_TIMEOUT_SECS,
                       retry_on_timeout=False, retry=Retry(NoBackoff(), 0))
    return redis.Redis(connection_pool=connection_pool(url, size, wait, decode_responses=True, **options))


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
