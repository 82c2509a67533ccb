"""Names of every Redis key and channel the service uses (pure logic, no I/O).

Tick batches go out on exact channels, one per bucket of tokens, so a replica subscribes to
the buckets its clients want and receives little else. Exact channels, not patterns: every
PSUBSCRIBE pattern taxes every PUBLISH on the server.
"""

from __future__ import annotations

PREFIX = "ticker"
TICK_BUCKETS = 64  # enough to spread load, few enough that a flush publishes a handful of messages


def bucket_of(token: int) -> int:
    """The bucket (and so the channel) a token's ticks travel on."""
    return token % TICK_BUCKETS


def tick_channel(bucket: int) -> str:
    return f"{PREFIX}:ticks:{bucket}"


def channel_for(token: int) -> str:
    return tick_channel(bucket_of(token))


LAST_TICKS = f"{PREFIX}:last"  # hash: token -> JSON of its last tick (snapshot for new subscribers)

DEMAND_VERSION = f"{PREFIX}:demand:version"  # bumped on every change, so shards poll one integer
DEMAND_REPLICAS = f"{PREFIX}:demand:replicas"  # set of replica ids that published demand


def demand_of(replica: str) -> str:
    """Hash token -> highest mode this replica's clients want."""
    return f"{PREFIX}:demand:{replica}"


def replica_alive(replica: str) -> str:
    """Expires unless the replica refreshes it: a crashed replica's demand dies with it."""
    return f"{PREFIX}:replica:{replica}:alive"


def shard_lease(slot: str) -> str:
    return f"{PREFIX}:shard:{slot}:lease"


def shard_generation(slot: str) -> str:
    return f"{PREFIX}:shard:{slot}:generation"


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
REGISTRY_RELOADED = f"{PREFIX}:registry:reloaded"
REGISTRY_VERSION = f"{PREFIX}:registry:version"  # bumped by each reload: replicas drop their caches

# Published with the api_key after any change to an account's access token (shards reconnect).
ACCOUNTS_CHANGED = f"{PREFIX}:accounts:changed"


def job_status(name: str) -> str:
    """Hash a beat job writes after each run: last run time, outcome, duration, detail."""
    return f"{PREFIX}:job:{name}:status"


def job_lock(name: str) -> str:
    """Held while a beat job runs, so two copies never run at once."""
    return f"{PREFIX}:job:{name}:lock"


JOBS = f"{PREFIX}:jobs"  # set of job names that have reported a status
