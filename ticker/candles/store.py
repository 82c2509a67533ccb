"""Where candles live: today's in Redis (the builder's state, each day's completed candles, live
updates on the candle channels) and completed ones in PostgreSQL (`candles`, partitioned by day).

Redis (ticker.bus.keys):
- `CANDLE_STATE`: token -> JSON `{interval: [day, last_ts, baseline, forming candle or null]}`,
  what a restarted builder resumes from (`CandleBuilder.state`), and where readers find the
  forming candle;
- `candles_of(day, interval, token)`: that IST day's completed candles, oldest first, kept
  `DAY_LIST_TTL_SECS` (subscribe-time history, and reads before PostgreSQL has them); of
  `second` candles only the last hour, and those never go to PostgreSQL (REDIS_ONLY);
- `candle_channel(bucket)`: live updates, one message per bucket per flush: a JSON list of
  `[token, interval, [start, open, high, low, close, volume, oi], closed]`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import date, datetime, timedelta

import orjson
import redis
from psycopg2.extras import execute_values
from sqlalchemy import Engine

from ticker.bus import keys
from ticker.candles.build import DAY_SECS, IST_OFFSET_SECS, Candle, day_of
from ticker.candles.models import PARTITION_SCHEMA
from ticker.clock import IST

DAY_LIST_TTL_SECS = 2 * 86_400  # today's candles stay until tomorrow's are well under way
PARTITIONS_AHEAD_DAYS = 3  # created ahead, so a missed beat run costs nothing
# `second` candles close on nearly every tick: 22,500 a day per instrument would swamp
# PostgreSQL, so they live in Redis only, the last hour of them.
REDIS_ONLY = frozenset({"second"})
SECOND_CANDLES_KEPT = 3600
_partitioned: set[date] = set()  # days this process has seen a partition for

_UPSERT = """
INSERT INTO candles (instrument_token, interval, ts, open, high, low, close, volume, oi) VALUES %s
ON CONFLICT (instrument_token, interval, ts) DO UPDATE SET
  open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close,
  volume = EXCLUDED.volume, oi = EXCLUDED.oi
"""


def day_name(day: int) -> str:
    """`YYYY-MM-DD` of an IST day number (`build.day_of`)."""
    return date.fromordinal(date(1970, 1, 1).toordinal() + day).isoformat()


# ---------------------------------------------------------------------------------------------
# Redis


# One round trip, one command: the builder's process pays per Redis command far more than
# Redis does (redis-py packs and parses each in Python), so a flush's writes travel as one JSON
# argument and this script applies them: the touched tokens' states, the completed candles
# appended to their day's lists (TTL set once; `second` lists trimmed), the live updates.
_SAVE = """
local p = cjson.decode(ARGV[1])
local state = p.state
for i = 1, #state, 200 do
  redis.call('hset', KEYS[1], unpack(state, i, math.min(i + 199, #state)))
end
for _, list in ipairs(p.lists) do
  local key = list[1]
  for i = 3, #list, 200 do
    redis.call('rpush', key, unpack(list, i, math.min(i + 199, #list)))
  end
  if list[2] == 1 then redis.call('ltrim', key, -tonumber(ARGV[3]), -1) end
  if redis.call('ttl', key) < 0 then redis.call('expire', key, ARGV[2]) end
end
local pub = p.pub
for i = 1, #pub, 2 do redis.call('publish', pub[i], pub[i + 1]) end
return 1
"""


class CandleWriter:
    """Saves a builder's flush in Redis (`write`): one script call per flush."""

    def __init__(self, client: redis.Redis):
        self.redis = client
        self._save = client.register_script(_SAVE)

    def write(self, states: dict[int, dict], closed: list[Candle], updates: Iterable[Candle]) -> None:
        """Store `states` (token -> `CandleBuilder.state`), append `closed` to their day lists
        and publish `updates` (forming and closed candles) on the candle channels. Raises
        redis.RedisError."""
        state: list[str] = []
        for token, series in states.items():
            state += (str(token), orjson.dumps(series).decode())
        lists: dict[tuple[str, str], list[str]] = defaultdict(list)
        for candle in closed:
            key = keys.candles_of(day_name(day_of(candle.start)), candle.interval, candle.token)
            lists[(key, candle.interval)].append(orjson.dumps(candle.values).decode())
        payload = {"state": state, "lists": [[key, int(interval in REDIS_ONLY), *rows]
                                             for (key, interval), rows in lists.items()],
                   "pub": live_messages(updates)}
        self._save(keys=[keys.CANDLE_STATE], args=[orjson.dumps(payload), DAY_LIST_TTL_SECS, SECOND_CANDLES_KEPT])


def live_messages(candles: Iterable[Candle]) -> list[str]:
    """`[channel, message, ...]`: one live-update message per candle channel bucket."""
    batches: dict[int, list] = defaultdict(list)
    for c in candles:
        batches[keys.bucket_of(c.token)].append([c.token, c.interval, c.values, c.closed])
    out: list[str] = []
    for bucket, batch in batches.items():
        out += (keys.CANDLE_CHANNELS[bucket], orjson.dumps(batch).decode())
    return out


def load_states(client: redis.Redis) -> dict[int, dict]:
    """Every token's stored series state (for a restarted builder)."""
    return {int(token): orjson.loads(raw) for token, raw in client.hgetall(keys.CANDLE_STATE).items()}


def today(client: redis.Redis, token: int, interval: str, now: float) -> list[list]:
    """Today's (IST) candles of a series as `[start, o, h, l, c, v, oi, closed]`, oldest first:
    the completed ones, then the forming one if it is today's."""
    return today_many(client, [(token, interval)], now)[(token, interval)]


def today_many(client: redis.Redis, series: list[tuple[int, str]], now: float) -> dict[tuple[int, str], list[list]]:
    """`today` of many `(token, interval)` series, in one round trip."""
    day = day_of(int(now))
    tokens = sorted({token for token, _ in series})
    pipe = client.pipeline(transaction=False)
    for token, interval in series:
        pipe.lrange(keys.candles_of(day_name(day), interval, token), 0, -1)
    if tokens:
        pipe.hmget(keys.CANDLE_STATE, tokens)
    replies = pipe.execute()
    states = dict(zip(tokens, replies[-1], strict=True)) if tokens else {}
    out = {}
    for (token, interval), raws in zip(series, replies, strict=False):
        rows = [[*orjson.loads(raw), True] for raw in raws]
        state = orjson.loads(states[token]).get(interval) if states.get(token) else None
        forming = state[3] if state else None
        if forming is not None and day_of(forming[0]) == day and (not rows or forming[0] > rows[-1][0]):
            rows.append([*forming, False])
        out[(token, interval)] = rows
    return out


# ---------------------------------------------------------------------------------------------
# PostgreSQL


def partition_name(day: date) -> str:
    return f"candles_{day:%Y%m%d}"


def ensure_partitions(engine: Engine, days: Iterable[date]) -> list[str]:
    """Create the day partitions of `days` that do not exist yet; returns those created."""
    created = []
    days = set(days) - _partitioned
    if not days:
        return created
    with engine.begin() as connection:
        cursor = connection.connection.cursor()
        for day in sorted(days):
            name = partition_name(day)
            cursor.execute("SELECT to_regclass(%s)", (f"{PARTITION_SCHEMA}.{name}",))
            if cursor.fetchone()[0] is not None:
                _partitioned.add(day)
                continue
            start = datetime.combine(day, datetime.min.time(), IST)
            cursor.execute(
                f'CREATE TABLE IF NOT EXISTS {PARTITION_SCHEMA}."{name}" PARTITION OF candles '
                "FOR VALUES FROM (%s) TO (%s)", (start, start + timedelta(days=1)))
            created.append(name)
    _partitioned.update(days)
    return created


def partitions(engine: Engine) -> list[date]:
    """The days that have a partition, ascending."""
    with engine.begin() as connection:
        cursor = connection.connection.cursor()
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'candles'")
        names = [row[0] for row in cursor.fetchall()]
    return sorted(datetime.strptime(n.removeprefix("candles_"), "%Y%m%d").date() for n in names)


def maintain_partitions(engine: Engine, today_: date, retention_days: int,
                        ahead: int = PARTITIONS_AHEAD_DAYS) -> str:
    """Create today's and the next `ahead` days' partitions; drop those older than
    `retention_days` (today counts as one). Returns a one-line summary (the beat job's detail)."""
    created = ensure_partitions(engine, (today_ + timedelta(days=n) for n in range(ahead + 1)))
    oldest_kept = today_ - timedelta(days=max(1, retention_days) - 1)
    dropped = []
    with engine.begin() as connection:
        cursor = connection.connection.cursor()
        for day in partitions(engine):
            if day < oldest_kept:
                cursor.execute(f'DROP TABLE IF EXISTS {PARTITION_SCHEMA}."{partition_name(day)}"')
                dropped.append(partition_name(day))
                _partitioned.discard(day)
    return f"created {len(created)} partitions, dropped {len(dropped)} (keeping from {oldest_kept})"


def write(engine: Engine, candles: list[Candle]) -> int:
    """Upsert completed candles (idempotent: a replay after a restart writes the same rows),
    creating their days' partitions first; `second` candles are not stored (REDIS_ONLY).
    Returns the rows written. Raises sqlalchemy/psycopg2 errors."""
    candles = [c for c in candles if c.interval not in REDIS_ONLY]
    if not candles:
        return 0
    ensure_partitions(engine, {_ist_date(c.start) for c in candles})
    rows = [(c.token, c.interval, datetime.fromtimestamp(c.start, IST), c.open, c.high, c.low, c.close,
             c.volume, c.oi) for c in candles]
    with engine.begin() as connection:
        execute_values(connection.connection.cursor(), _UPSERT, rows, page_size=1000)
    return len(rows)


def read(engine: Engine, token: int, interval: str, start: datetime, end: datetime) -> list[list]:
    """Completed candles of a series with `start <= ts <= end`, oldest first, as
    `[start epoch s, o, h, l, c, v, oi]`."""
    with engine.begin() as connection:
        cursor = connection.connection.cursor()
        cursor.execute(
            "SELECT extract(epoch FROM ts)::bigint, open, high, low, close, volume, oi FROM candles "
            "WHERE instrument_token = %s AND interval = %s AND ts BETWEEN %s AND %s ORDER BY ts",
            (token, interval, start, end))
        return [list(row) for row in cursor.fetchall()]


def stored_today(engine: Engine, series: list[tuple[int, str]], now: float) -> dict[tuple[int, str], list[list]]:
    """Today's (IST) completed candles of each `(token, interval)` series that PostgreSQL holds,
    oldest first, as `[start epoch s, o, h, l, c, v, oi]`, in one query: what `today_many`
    cannot give once Redis lost its day lists (a restart, a failover)."""
    wanted = [(token, interval) for token, interval in series if interval not in REDIS_ONLY]
    out: dict[tuple[int, str], list[list]] = {pair: [] for pair in series}
    if not wanted:
        return out
    start = datetime.fromtimestamp(day_of(int(now)) * DAY_SECS - IST_OFFSET_SECS, IST)
    with engine.begin() as connection:
        cursor = connection.connection.cursor()
        cursor.execute(
            "SELECT instrument_token, interval, extract(epoch FROM ts)::bigint, open, high, low, close, volume, oi "
            "FROM candles WHERE instrument_token = ANY(%s) AND interval = ANY(%s) AND ts >= %s ORDER BY ts",
            (sorted({t for t, _ in wanted}), sorted({i for _, i in wanted}), start))
        for token, interval, *row in cursor.fetchall():
            if (token, interval) in out:
                out[(token, interval)].append(row)
    return out


def _ist_date(ts: int) -> date:
    return date.fromordinal(date(1970, 1, 1).toordinal() + (ts + IST_OFFSET_SECS) // DAY_SECS)

