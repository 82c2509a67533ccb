"""Names of every Redis key and channel the service uses (pure logic, no I/O).

Tick batches go out on exact channels, one per bucket of tokens, so a replica subscribes to
the buckets its clients want and receives little else. Exact channels, not patterns: every
PSUBSCRIBE pattern taxes every PUBLISH on the server.
"""

from __future__ import annotations

from ticker.config import Config

PREFIX = "ticker"
CHANNELS = f"{PREFIX}:{Config.CHANNEL_NAMESPACE}"  # every pub/sub channel name starts with this
TICK_BUCKETS = 64  # enough to spread load, few enough that a flush publishes a handful of messages


def bucket_of(token: int) -> int:
    """The bucket (and so the channel) a token's ticks travel on. A Kite instrument token is
    the exchange token shifted left 8 bits, with the segment in the low byte: the exchange token
    spreads tokens over the buckets, the segment would put a whole exchange in one."""
    return (token >> 8) % TICK_BUCKETS


def tick_channel(bucket: int) -> str:
    return f"{CHANNELS}:ticks:{bucket}"


TICK_CHANNELS = tuple(tick_channel(bucket) for bucket in range(TICK_BUCKETS))


def channel_for(token: int) -> str:
    return TICK_CHANNELS[bucket_of(token)]


# On a Redis Cluster (`Config.TICK_BUS_URL`) each bucket's channel and keys share one hash tag,
# so they live on one shard and one script can check the fence, publish and keep the snapshots.


def bucket_tag(bucket: int) -> str:
    return f"{{tb{bucket}}}"


def sharded_tick_channel(bucket: int) -> str:
    """The bucket's channel for SPUBLISH/SSUBSCRIBE on a cluster."""
    return f"{CHANNELS}:{bucket_tag(bucket)}:ticks"


SHARDED_TICK_CHANNELS = tuple(sharded_tick_channel(bucket) for bucket in range(TICK_BUCKETS))


def bucket_last(bucket: int) -> str:
    """Hash token -> JSON of its last tick, for the tokens of one bucket (cluster)."""
    return f"{PREFIX}:{bucket_tag(bucket)}:last"


def bucket_epoch(bucket: int) -> str:
    """The bus epoch (ticker.bus.epoch) of one bucket, beside the snapshots it covers (cluster)."""
    return f"{PREFIX}:{bucket_tag(bucket)}:epoch"


def bucket_lease(bucket: int, slot: str) -> str:
    """The bucket's copy of a shard's lease value, expiring with the holder's local validity."""
    return f"{PREFIX}:{bucket_tag(bucket)}:lease:{slot}"


def bucket_fence(bucket: int) -> str:
    """Hash slot -> highest lease generation ever registered at this bucket (never goes back)."""
    return f"{PREFIX}:{bucket_tag(bucket)}:fence"


LAST_TICKS = f"{PREFIX}:last"  # hash: token -> JSON of its last tick (snapshot for new subscribers)
EPOCH = f"{PREFIX}:epoch"  # hash {id, replid}: the run of Redis state seqs count in (ticker.bus.epoch)

DEMAND_VERSION = f"{PREFIX}:demand:version"  # bumped on every change, so shards poll one integer
DEMAND_REPLICAS = f"{PREFIX}:demand:replicas"  # set of replica ids that published demand


def demand_of(replica: str) -> str:
    """Hash token -> highest mode this replica's clients want."""
    return f"{PREFIX}:demand:{replica}"


def replica_alive(replica: str) -> str:
    """Expires unless the replica refreshes it: a crashed replica's demand dies with it."""
    return f"{PREFIX}:replica:{replica}:alive"


def replica_stats(replica: str) -> str:
    """JSON of one web replica's connection and delivery figures; expires with the replica."""
    return f"{PREFIX}:replica:{replica}:stats"


STATS_REPLICAS = f"{PREFIX}:stats:replicas"  # set of replica ids that published stats


def user_connections_of(replica: str) -> str:
    """Hash user -> connections one replica holds; expires unless the replica refreshes it."""
    return f"{PREFIX}:connections:{replica}"


CONNECTION_REPLICAS = f"{PREFIX}:connections:replicas"  # set of replica ids holding connections


def listener_wake(replica: str) -> str:
    """Channel a replica publishes to itself so its tick listener subscribes new buckets at once."""
    return f"{CHANNELS}:listener:{replica}"


def shard_lease(slot: str) -> str:
    return f"{PREFIX}:shard:{slot}:lease"


def shard_generation(slot: str) -> str:
    return f"{PREFIX}:shard:{slot}:generation"


# Epoch ms (Redis TIME) since which this Redis holds the shards' lease history: set by the first
# lease acquired after Redis lost its state (ticker.bus.lease).
SHARD_HISTORY_SINCE = f"{PREFIX}:shard:history_since"
# The replication ID of the server that began that history: another one (a replica promoted by
# a failover, which may lack the latest lease writes) begins a new history.
SHARD_HISTORY_REPLID = f"{PREFIX}:shard:history_replid"


def shard_state(slot: str) -> str:
    """Hash the owning shard refreshes: state, owner, tokens, heartbeat time."""
    return f"{PREFIX}:shard:{slot}:state"


def shard_dispatched(slot: str) -> str:
    return f"{PREFIX}:shard:{slot}:dispatched"


def worker_stopping(hostname: str) -> str:
    return f"{PREFIX}:worker:{hostname}:stopping"


REGISTRY_TOKENS = f"{PREFIX}:registry:tokens"  # hash token -> "EXCHANGE:TRADINGSYMBOL"
REGISTRY_SYMBOLS = f"{PREFIX}:registry:symbols"  # hash "EXCHANGE:TRADINGSYMBOL" -> token
REGISTRY_LOCK = f"{PREFIX}:registry:lock"  # one replica rebuilds the Redis mirror at a time
REGISTRY_LOADING = f"{PREFIX}:registry:loading"  # one loader of the dump at a time
# Published after each successful reload: {"renumbered": {"<old token>": <new token>}, "removed": [token]}
REGISTRY_RELOADED = f"{CHANNELS}:registry:reloaded"
REGISTRY_VERSION = f"{PREFIX}:registry:version"  # bumped by each reload: replicas drop their caches
REGISTRY_MIRRORED = f"{PREFIX}:registry:mirrored"  # fingerprint of the registry the two hashes hold

# Published with the api_key after any change to an account's access token (shards reconnect).
ACCOUNTS_CHANGED = f"{CHANNELS}:accounts:changed"


def job_status(name: str) -> str:
    """Hash a beat job writes after each run: last run time, outcome, duration, detail."""
    return f"{PREFIX}:job:{name}:status"


def job_lock(name: str) -> str:
    """Held while a beat job runs, so two copies never run at once."""
    return f"{PREFIX}:job:{name}:lock"


JOBS = f"{PREFIX}:jobs"  # set of job names that have reported a status

# Assignment of tokens to connection slots (ticker.bus.assignment).
ASSIGNED_SLOT = f"{PREFIX}:assignment:slot"  # hash token -> slot
ASSIGNED_MODE = f"{PREFIX}:assignment:mode"  # hash token -> mode streamed upstream
ASSIGNED_IDLE = f"{PREFIX}:assignment:idle"  # hash token -> epoch secs since nobody wants it
ASSIGNMENT_OVERFLOW = f"{PREFIX}:assignment:overflow"  # set of wanted tokens beyond the pool's capacity
ASSIGNMENT_WAITING = f"{PREFIX}:assignment:waiting"  # set of wanted tokens waiting for a usable slot
ASSIGNMENT_VERSION = f"{PREFIX}:assignment:version"  # bumped on every change
ASSIGNMENT_INPUTS = f"{PREFIX}:assignment:inputs"  # the demand and slots versions last assigned from
ASSIGNMENT_LOCK = f"{PREFIX}:assignment:lock"
ASSIGNMENT_NEXT_RELEASE = f"{PREFIX}:assignment:next_release"  # epoch secs the first idle token goes
USABLE_SLOTS = f"{PREFIX}:slots:usable"  # hash slot -> capacity, for accounts with a valid token
POOL_SLOTS = f"{PREFIX}:slots:pool"  # hash slot -> capacity, for every enabled account (usable or not)
ACCOUNTS_DOWN = f"{PREFIX}:accounts:down"  # hash api key -> why its slots cannot stream (a client reason)
USABLE_SLOTS_VERSION = f"{PREFIX}:slots:version"  # bumped when any of the three above changes
ACCOUNT_TOKEN_FINGERPRINTS = f"{PREFIX}:accounts:fingerprints"  # hash api key -> hash of its token


def slot_tokens(slot: str) -> str:
    """Hash token -> mode: what one slot's shard must stream."""
    return f"{PREFIX}:slot:{slot}:tokens"


def orders_of(api_key: str) -> str:
    """Channel of an account's order updates, as Kite's ticker sends them."""
    return f"{CHANNELS}:orders:{api_key}"

SOCKETIO_CHANNEL = f"{CHANNELS}:socketio"  # the Flask-SocketIO message queue (control plane)

# Candles (ticker.candles): the builder's state, today's completed candles, and live updates on
# channels bucketed like the ticks', so a replica subscribes to the buckets its clients want.
CANDLE_STATE = f"{PREFIX}:candles:state"  # hash token -> JSON of the token's series (forming candles)
CANDLE_BUILDER = f"{PREFIX}:candles:builder"  # hash: the builder's heartbeat and counters
CANDLE_LEASE = f"{PREFIX}:candles:lease"  # one builder at a time


def candles_of(day: str, interval: str, token: int) -> str:
    """List of one IST day's completed candles of a series, oldest first: JSON
    `[start epoch s, open, high, low, close, volume, oi]` each."""
    return f"{PREFIX}:candles:{day}:{interval}:{token}"


def candle_channel(bucket: int) -> str:
    return f"{CHANNELS}:candles:{bucket}"


CANDLE_CHANNELS = tuple(candle_channel(bucket) for bucket in range(TICK_BUCKETS))
