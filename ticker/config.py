"""Configuration: every environment variable the service reads, read here and only here."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
INSTANCE = Path(os.environ.get("TICKER_INSTANCE_DIR", ROOT / "instance"))


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def _number(name: str, default: int | float, kind: type) -> int | float:
    """A setting that is a count or a duration: unset or empty is the default (platforms and
    compose files set empty variables); anything but a number of that kind, or a negative one,
    stops the process at start naming the setting."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected {'an integer' if kind is int else 'a number'}") from None
    if value < 0:
        raise ValueError(f"{name}={raw!r}: expected a number of at least 0")
    return value


def _int(name: str, default: int) -> int:
    return int(_number(name, default, int))


def _float(name: str, default: float) -> float:
    return float(_number(name, default, float))


def _list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def _read(path: str) -> str | None:
    return Path(path).read_text() if path else None


def _file(name: str) -> str:
    """A setting naming a file the service reads later (a certificate): a path that is not a
    readable file stops the process at start naming the setting, rather than every connection
    failing later with an error that does not name it."""
    path = os.environ.get(name, "").strip()
    if path and not (os.path.isfile(path) and os.access(path, os.R_OK)):
        raise ValueError(f"{name}={path!r}: no such readable file")
    return path


def _choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    """A setting with a few allowed values: a typo fails every process at start, not at the
    first connection."""
    value = os.environ.get(name, default).strip().lower()
    if value not in choices:
        raise ValueError(f"{name}={value!r}: expected one of {', '.join(choices)}")
    return value


SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379  # Redis Sentinel's default port
SENTINEL_FORM = f"{SENTINEL_SCHEME}://[[username]:password@]host[:port][,host[:port]...]/<db>/<master_name>"


@dataclass(frozen=True)
class SentinelUrl:
    """A `REDIS_URL` naming a Redis Sentinel deployment instead of one server:
    `redis+sentinel://[[username]:password@]host[:port][,host[:port]...]/<db>/<master_name>`, the
    form python-socketio's RedisManager documents. `sentinels` are (host, port) pairs (port 26379
    when left out); the credentials and the database number are the master's (sentinels are
    asked without credentials); percent-encoded characters in them are decoded."""

    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> SentinelUrl | None:
        """The Sentinel deployment `url` names; None for any other scheme (`redis://`, `rediss://`,
        `unix://`). Raises ValueError for a `redis+sentinel://` URL not of the form above."""
        parts = urlsplit(url)
        if parts.scheme != SENTINEL_SCHEME:
            return None
        credentials, _, hosts = parts.netloc.rpartition("@")
        path = parts.path.strip("/").split("/")
        if not hosts or len(path) != 2 or not path[0].isdigit() or not path[1]:
            raise ValueError(f"a Sentinel REDIS_URL has the form {SENTINEL_FORM}")
        username, _, password = credentials.partition(":")
        return cls(tuple(_host_port(host) for host in hosts.split(",")), unquote(path[1]), int(path[0]),
                   unquote(username) or None, unquote(password) or None)


def _host_port(address: str) -> tuple[str, int]:
    if address.startswith("["):  # [IPv6]:port
        host, _, port = address[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = address.partition(":")
    if not host or (port and not port.isdigit()):
        raise ValueError(f"not a sentinel address (host[:port]): {address!r}")
    return host, int(port or SENTINEL_PORT)


def _channel_namespace(redis_url: str) -> str:
    # The database number the URL names: the path of redis://host:port/<db> (0 when it names
    # none, as platforms' URLs do, which must not make their password part of channel names),
    # the first part of a Sentinel URL's (so moving a deployment behind Sentinel keeps its channels).
    sentinel = SentinelUrl.parse(redis_url)
    return "db" + (str(sentinel.db) if sentinel else urlsplit(redis_url).path.strip("/") or "0")


# The bundled simulator's defaults, so a local run needs no Kite credentials.
SIM_URL = "http://127.0.0.1:8765"
SIM_API_KEY = "sim_key"
SIM_API_SECRET = "sim_secret"
SIM_ACCESS_TOKEN = "sim_access_token"


class Config:
    """Production-shaped defaults; each value can be overridden from the environment."""

    ENV = _env("TICKER_ENV", "development")
    SECRET_KEY = _env("SECRET_KEY", "dev-only-secret-change-me")
    LOG_LEVEL = _env("LOG_LEVEL", "INFO")
    # Set only under a forking server: where each worker process writes its metrics for /metrics
    # to merge (prometheus_client reads the same variable when the process starts).
    PROMETHEUS_MULTIPROC_DIR = _env("PROMETHEUS_MULTIPROC_DIR")

    # One Redis server (redis://, rediss://, unix://, as redis-py's from_url reads them), or a
    # Redis Sentinel deployment's master (SentinelUrl); every part of the service uses it.
    REDIS_URL = _env("REDIS_URL", "redis://127.0.0.1:6379/0")
    # Pub/sub channels are global to a Redis server, not per database: this keeps deployments
    # (and test runs) that share a server on different database numbers apart.
    CHANNEL_NAMESPACE = _env("TICKER_CHANNEL_NAMESPACE") or _channel_namespace(REDIS_URL)
    # A `rediss://` REDIS_URL (managed Redis over TLS), for every client of the service (redis-py,
    # the Celery broker, the Socket.IO queue): whether the server's certificate must verify
    # (Heroku Redis presents a self-signed one: `none`), the CA bundle it must verify against
    # (else the system's), and a client certificate and key for servers that require one.
    REDIS_SSL_CERT_REQS = _choice("REDIS_SSL_CERT_REQS", "required", ("required", "optional", "none"))
    REDIS_SSL_CA_CERTS = _file("REDIS_SSL_CA_CERTS")
    REDIS_SSL_CERTFILE = _file("REDIS_SSL_CERTFILE")
    REDIS_SSL_KEYFILE = _file("REDIS_SSL_KEYFILE")
    # Where tick batches and snapshots travel: empty, on REDIS_URL (one Redis). Or a Redis
    # Cluster (Redis >= 7), `redis+cluster://host:port[,host:port...]` naming any of its nodes:
    # batches then go by sharded pub/sub (SPUBLISH/SSUBSCRIBE), each bucket's channel and
    # snapshots on the one shard that owns its hash slot (ticker.bus.sharded). Everything else
    # (leases, demand, Celery, the Socket.IO queue) stays on REDIS_URL.
    TICK_BUS_URL = _env("TICK_BUS_URL")
    # A process's Redis connections for serving others (a replica's requests): at most this many
    # at once; a caller finding them all busy waits up to the wait, then gets `server_busy`.
    REDIS_MAX_CONNECTIONS = _int("REDIS_MAX_CONNECTIONS", 64)
    REDIS_POOL_WAIT_SECS = _float("REDIS_POOL_WAIT_SECS", 10.0)
    DATABASE_URL = _env("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/ticker")
    # A request waits this long for one of the process's pooled database connections, then gets
    # 503 `server_busy` (ticker.db).
    DATABASE_POOL_TIMEOUT_SECS = _float("DATABASE_POOL_TIMEOUT_SECS", 5.0)
    # A PostgreSQL that has not completed a connect within this long is taken for down.
    DATABASE_CONNECT_TIMEOUT_SECS = _float("DATABASE_CONNECT_TIMEOUT_SECS", 5.0)
    # Web replicas only (their queries take milliseconds; workers run the registry reload's long
    # COPYs): PostgreSQL ends a statement after this long, and a reply not back within it and
    # 2 s more is taken for a database that is gone (503 `database_unavailable`). 0: no limit.
    DATABASE_STATEMENT_TIMEOUT_SECS = _float("DATABASE_STATEMENT_TIMEOUT_SECS", 5.0)

    # Kite endpoints: the real ones in production, the bundled simulator by default.
    KITE_API_ROOT = _env("KITE_API_ROOT", SIM_URL)
    KITE_TICKER_ROOT = _env("KITE_TICKER_ROOT", SIM_URL.replace("http", "ws", 1))
    KITE_LOGIN_ROOT = _env("KITE_LOGIN_ROOT", SIM_URL)
    KITE_API_KEY = _env("KITE_API_KEY", SIM_API_KEY)
    KITE_API_SECRET = _env("KITE_API_SECRET", SIM_API_SECRET)
    KITE_ACCESS_TOKEN = _env("KITE_ACCESS_TOKEN", SIM_ACCESS_TOKEN)
    # Kite account secrets at rest: comma-separated Fernet keys, the first encrypts, all decrypt
    # (rotate by prepending a new key). Empty in development/test: a key derived from SECRET_KEY.
    SECRETS_KEYS = _list("SECRETS_KEYS")
    # Optional "package.module:function" called as f(api_key) -> access token or None, for
    # operators who obtain Kite tokens their own way (see tasks/accounts.py).
    KITE_TOKEN_PROVIDER = _env("KITE_TOKEN_PROVIDER")
    # Where the Kite login redirect lands after a successful login (the operator's dashboard).
    KITE_LOGIN_DONE_URL = _env("KITE_LOGIN_DONE_URL")
    # Exchange holidays (one YYYY-MM-DD per line, # comments): beat skips the registry reload.
    HOLIDAYS_FILE = _env("HOLIDAYS_FILE", str(INSTANCE / "holidays.txt"))
    # Kite's limits; configurable because Kite has changed them before.
    KITE_CONNECTIONS_PER_KEY = _int("KITE_CONNECTIONS_PER_KEY", 3)
    KITE_TOKENS_PER_CONNECTION = _int("KITE_TOKENS_PER_CONNECTION", 3000)

    # Shards: tokens always streamed (operator watchlist) and how long an unwanted token stays.
    WATCHLIST_TOKENS = [int(t) for t in _list("WATCHLIST_TOKENS")]
    UNSUBSCRIBE_GRACE_SECS = _float("UNSUBSCRIBE_GRACE_SECS", 60.0)
    # Recording (ticker.feed.recorder): each shard writes every frame Kite sends it under this
    # directory, one directory per IST date; empty: off. Dates older than the retention are
    # deleted (0: kept for ever).
    RECORD_DIR = _env("RECORD_DIR")
    RECORD_RETENTION_DAYS = _int("RECORD_RETENTION_DAYS", 7)

    # Candles (ticker.candles): a forming candle closes this long after its bucket's end when no
    # later tick closed it first (ticks arriving later are dropped); completed candles are kept
    # in PostgreSQL this many IST days, today included.
    CANDLE_CLOSE_GRACE_SECS = _float("CANDLE_CLOSE_GRACE_SECS", 3.0)
    # The intervals built (ticker.candles.build.INTERVALS); each costs the builder CPU per tick
    # (BENCHMARKS.md, "Candles"), `second` the most.
    # The intervals built: a minute by default (each one more costs the builder CPU per tick,
    # `second` the most: BENCHMARKS.md, "Candles"); any of second, minute, 5minute, 15minute, 60minute.
    CANDLE_INTERVALS = _list("CANDLE_INTERVALS", "minute")
    CANDLE_RETENTION_DAYS = _int("CANDLE_RETENTION_DAYS", 30)

    # Socket.IO server.
    ASYNC_MODE = _env("ASYNC_MODE", "gevent")  # measured faster than eventlet: README, BENCHMARKS.md
    # A platform's router (Heroku, Render, Railway, Cloud Run, ...) hands the process its port in
    # PORT and connects from outside the process's host: every interface then. Without PORT (a
    # local run), this host only. WEB_HOST, when set, wins either way.
    WEB_HOST = _env("WEB_HOST") or ("0.0.0.0" if "PORT" in os.environ else "127.0.0.1")
    WEB_PORT = _int("PORT", 5000)
    # Several replicas on one host (`python -m ticker.replicas`, ticker/replicas.py): how many
    # (0: one per core this host lets the process run on), each on PORT + its index; whether
    # each is pinned to a core of its own; and where to write nginx's `upstream` block naming
    # them (as WEB_UPSTREAM_HOST:port; empty: write none).
    WEB_CONCURRENCY = _int("WEB_CONCURRENCY", 0)
    WEB_PIN_CORES = _env("WEB_PIN_CORES", "on") != "off"
    WEB_UPSTREAM_FILE = _env("WEB_UPSTREAM_FILE")
    WEB_UPSTREAM_HOST = _env("WEB_UPSTREAM_HOST", "127.0.0.1")
    CORS_ALLOWED_ORIGINS = _list("CORS_ALLOWED_ORIGINS", "*" if ENV == "development" else "")
    MAX_TOKENS_PER_CONNECTION = _int("MAX_TOKENS_PER_CONNECTION", 3000)
    MAX_TOKENS_PER_REQUEST = _int("MAX_TOKENS_PER_REQUEST", 1000)
    # Fan-out limits (docs/API.md lists the error code of each breach).
    MAX_MESSAGES_PER_SEC = _float("MAX_MESSAGES_PER_SEC", 20.0)  # client -> server events, per connection
    MAX_CONNECTIONS_PER_USER = _int("MAX_CONNECTIONS_PER_USER", 20)  # across every replica
    MAX_CONNECTS_PER_ADDRESS_PER_SEC = _float("MAX_CONNECTS_PER_ADDRESS_PER_SEC", 20.0)
    # Requests a second each user (JWT `sub`) may make to the Kite-shaped HTTP endpoints (quotes,
    # candles) on one replica; beyond it 429 `rate_limited`. 0: no limit.
    MAX_REST_REQUESTS_PER_USER_PER_SEC = _int("MAX_REST_REQUESTS_PER_USER_PER_SEC", 20)
    # Proxies in front of the replicas that append to X-Forwarded-For (nginx in docker-compose: 1).
    # The client's address is the entry the farthest of them appended; 0 ignores the header,
    # which any client can forge, and takes the socket's peer address.
    TRUSTED_PROXY_COUNT = _int("TRUSTED_PROXY_COUNT", 0)
    MAX_CONNECTIONS = _int("MAX_CONNECTIONS", 20000)  # per replica: beyond this, `server_busy`
    # Client requests (connects, messages, disconnects) a replica works on at once; the rest wait
    # in turn up to the wait, then get `server_busy` (ticker/web/admission.py).
    MAX_CONCURRENT_REQUESTS = _int("MAX_CONCURRENT_REQUESTS", 16)
    REQUEST_QUEUE_WAIT_SECS = _float("REQUEST_QUEUE_WAIT_SECS", 30.0)
    # Connections the kernel holds for the replica to accept: a crowd after a restart arrives in
    # one burst, and a full queue drops SYNs, which clients retry only after 1, 3, 7 s.
    LISTEN_BACKLOG = _int("LISTEN_BACKLOG", 2048)
    SLOW_CLIENT_SECS = _float("SLOW_CLIENT_SECS", 10.0)  # conflated this long, a client is disconnected
    TOKEN_EXPIRY_GRACE_SECS = _float("TOKEN_EXPIRY_GRACE_SECS", 30.0)  # time to `reauth` after `exp`
    # Engine.IO heartbeat: a ping every interval; no pong within the timeout ends the connection.
    PING_INTERVAL_SECS = _float("PING_INTERVAL_SECS", 25.0)
    PING_TIMEOUT_SECS = _float("PING_TIMEOUT_SECS", 20.0)
    # Off only for the benchmark's baseline, where another process emits the ticks.
    WEB_TICK_DELIVERY = _env("WEB_TICK_DELIVERY", "on") != "off"
    # WebSocket permessage-deflate: off by default. Compressing every frame for every client cost
    # two thirds of the web process's CPU and a zlib state per connection (BENCHMARKS.md, Fan-out).
    WS_COMPRESSION = _env("WS_COMPRESSION", "off") == "on"

    # JWT: RS256 with a public key (PEM text or file) or a JWKS URL. The private key is only
    # for minting development tokens; production tokens come from the platform's user service.
    JWT_ALGORITHM = _env("JWT_ALGORITHM", "RS256")
    JWT_DECODE_ALGORITHMS = _list("JWT_ALGORITHMS", "RS256")
    JWT_PUBLIC_KEY = _env("JWT_PUBLIC_KEY") or _read(_env("JWT_PUBLIC_KEY_FILE"))
    JWT_PRIVATE_KEY = _env("JWT_PRIVATE_KEY") or _read(_env("JWT_PRIVATE_KEY_FILE"))
    JWT_JWKS_URL = _env("JWT_JWKS_URL")
    JWT_DECODE_AUDIENCE = _env("JWT_AUDIENCE") or None
    JWT_ENCODE_AUDIENCE = JWT_DECODE_AUDIENCE
    JWT_DECODE_ISSUER = _env("JWT_ISSUER") or None
    JWT_ENCODE_ISSUER = JWT_DECODE_ISSUER
    JWT_DEV_KEY_DIR = INSTANCE
    # Clock skew allowed between the issuer and this server, on `exp`, `nbf` and `iat` alike
    # (flask-jwt-extended hands it to PyJWT as `leeway`).
    JWT_DECODE_LEEWAY = _int("JWT_LEEWAY_SECS", 30)
    JWT_REQUIRE_EXP = _env("JWT_REQUIRE_EXP", "true").lower() not in ("false", "0", "no", "off")
    # JWKS (ticker/web/jwks.py): the set is refetched after its Cache-Control max-age, clamped
    # to [MIN_AGE, MAX_AGE] (MAX_AGE without the header); when fetches fail it stays in use for
    # STALE past that, then tokens are refused `auth_unavailable`. A fetch gives up after TIMEOUT.
    JWT_JWKS_MAX_AGE_SECS = _float("JWT_JWKS_MAX_AGE_SECS", 300.0)
    JWT_JWKS_MIN_AGE_SECS = _float("JWT_JWKS_MIN_AGE_SECS", 10.0)
    JWT_JWKS_STALE_SECS = _float("JWT_JWKS_STALE_SECS", 3600.0)
    JWT_JWKS_TIMEOUT_SECS = _float("JWT_JWKS_TIMEOUT_SECS", 2.0)
    # A connection is closed (`connection_max_age`) after this long whatever its token says;
    # 0: no cap. A day: a client reconnects once a day at worst.
    MAX_CONNECTION_SECS = _float("MAX_CONNECTION_SECS", 86400.0)

    # Market quotes (GET /quote...): how long a request waits for the first tick of an instrument
    # nobody streamed (then it is reported `pending`), and how long after the last quote naming
    # it the replica keeps such an on-demand subscription (then UNSUBSCRIBE_GRACE_SECS applies).
    QUOTE_WAIT_SECS = _float("QUOTE_WAIT_SECS", 3.0)
    QUOTE_HOLD_SECS = _float("QUOTE_HOLD_SECS", 30.0)

    # The claim listing the Kite exchanges a token's data may come from (ticker.web.entitlements).
    JWT_ENTITLEMENTS_CLAIM = _env("JWT_ENTITLEMENTS_CLAIM", "exchanges")


class TestConfig(Config):
    """What the test suite overrides: its own Redis database and PostgreSQL database."""

    ENV = "test"
    REDIS_URL = _env("TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
    DATABASE_URL = _env("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/ticker_test")
    CANDLE_INTERVALS = _list("CANDLE_INTERVALS", "second,minute,5minute,15minute,60minute")  # every rule tested
