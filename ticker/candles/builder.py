"""The candle builder: a long-running process (`flask candles run`, the Procfile's `candles`)
that reads every tick batch from the bus and keeps candles (ticker.candles.build) up to date.

Why a consumer of the bus rather than the shards: the shard's hot path (parse, stamp, publish)
stays as it was, and one builder sees every slot's ticks, so a token moving between slots keeps
one series. Its cost per tick is measured against the shard's in BENCHMARKS.md ("Candles").

Each turn: read what the tick channels hold (all 64 buckets: exact channels, no patterns), fold
it, then in one Redis round trip save the touched tokens' series and the completed candles and
publish the live updates (ticker.candles.store); completed candles go to PostgreSQL in batches
every `WRITE_EVERY_SECS`. One builder runs at a time (a lease in Redis); a second one waits.

Faults: a lost Redis connection is retried with backoff (the ticks published meanwhile are
lost: the gap rule of ticker.candles.build applies); a failing PostgreSQL keeps the completed
candles in memory (at most `PENDING_MAX` rows, the oldest dropped beyond and counted) and
retries. The builder's heartbeat and counters are in the Redis hash `CANDLE_BUILDER`, which
/health (`candles`) and /metrics (`ticker_candles_*`) read.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable

import orjson
import redis
from sqlalchemy import Engine

from ticker.bus import keys
from ticker.bus.ticks import unpack
from ticker.candles import store
from ticker.candles.build import INTERVALS, CandleBuilder
from ticker.logs import event

log = logging.getLogger(__name__)

LEASE_TTL_MS = 6_000  # a builder that stops renewing (killed, stuck) is replaced within this
RENEW_EVERY_SECS = 2.0
HEARTBEAT_EVERY_SECS = 1.0
WRITE_EVERY_SECS = 1.0  # completed candles reach PostgreSQL within about this
READ_TIMEOUT_SECS = 0.1  # a quiet bus still gets its candles closed by the wall clock this often
MAX_MESSAGES_PER_TURN = 500  # a busy bus still flushes (and publishes live candles) this often
PENDING_MAX = 500_000  # completed candles held for a failing PostgreSQL (about 100 MB)
RETRY_MAX_SECS = 10.0

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class CandleService:
    """The builder's loop: `run(should_stop)` until `should_stop()` is true."""

    def __init__(self, client: redis.Redis, engine: Engine, grace_secs: float,
                 intervals: Iterable[str] = INTERVALS, clock: Callable[[], float] = time.time):
        self.redis = client
        self.engine = engine
        self.clock = clock
        self.builder = CandleBuilder(intervals, grace_secs)
        self.writer = store.CandleWriter(client)
        self.owner = f"{socket.gethostname()}-{os.getpid()}"
        self.pending: deque = deque()
        self.ticks = 0
        self.rows_written = 0
        self.rows_dropped = 0
        self.write_failures = 0
        self.last_error = ""
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._restored = False

    def run(self, should_stop: Callable[[], bool]) -> None:
        """Hold the lease and build; on a Redis failure, back off and start over (the lease is
        taken again, the in-memory candles kept)."""
        delay = 0.5
        while not should_stop():
            try:
                if self._acquire():
                    delay = 0.5
                    self._build(should_stop)
                else:
                    time.sleep(RENEW_EVERY_SECS)
            except redis.RedisError as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                event(log, "candles_bus_failed", logging.WARNING, error=self.last_error, retry_secs=delay)
                time.sleep(delay)
                delay = min(RETRY_MAX_SECS, delay * 2)
        self._write_pending()
        try:  # a clean stop hands over at once; a killed builder's lease expires instead
            self._release(keys=[keys.CANDLE_LEASE], args=[self.owner])
        except redis.RedisError:
            pass

    def _acquire(self) -> bool:
        if not self.redis.set(keys.CANDLE_LEASE, self.owner, nx=True, px=LEASE_TTL_MS):
            return self.redis.get(keys.CANDLE_LEASE) == self.owner and bool(self._renew_lease())
        if not self._restored:
            for token, state in store.load_states(self.redis).items():
                self.builder.restore(token, state)
            self._restored = True
            log.info("candle builder %s resumed the candles of %d tokens", self.owner, len(self.builder.series))
        return True

    def _renew_lease(self) -> int:
        return self._renew(keys=[keys.CANDLE_LEASE], args=[self.owner, LEASE_TTL_MS])

    def _build(self, should_stop: Callable[[], bool]) -> None:
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(*keys.TICK_CHANNELS)
        renewed = heartbeat = written = 0.0
        try:
            while not should_stop():
                self._read(pubsub)
                now = self.clock()
                self.flush(now)
                if now - written >= WRITE_EVERY_SECS:
                    written = now
                    self._write_pending()
                if now - renewed >= RENEW_EVERY_SECS:
                    renewed = now
                    if not self._renew_lease():
                        log.warning("candle builder %s lost its lease: standing by", self.owner)
                        return
                if now - heartbeat >= HEARTBEAT_EVERY_SECS:
                    heartbeat = now
                    self._report(now)
        finally:
            pubsub.close()

    def _read(self, pubsub) -> None:
        message = pubsub.get_message(timeout=READ_TIMEOUT_SECS)
        count = 0
        while message is not None:
            self.fold(message["data"], self.clock())
            count += 1
            if count >= MAX_MESSAGES_PER_TURN:
                return
            message = pubsub.get_message(timeout=0)

    def fold(self, batch: bytes | str, now: float) -> int:
        """Fold one tick batch (ticker.bus.ticks.pack's format); returns its ticks."""
        add = self.builder.add
        items = unpack(batch)
        for _, encoded in items:
            add(orjson.loads(encoded), now)
        self.ticks += len(items)
        return len(items)

    def flush(self, now: float) -> None:
        """Close what is due, then save, publish and queue for PostgreSQL what changed."""
        builder = self.builder
        builder.close_due(now)
        forming, closed = builder.take_updates()
        if not forming and not closed:
            return
        tokens = {c.token for c in forming} | {c.token for c in closed}
        self.writer.write({t: builder.state(t) for t in tokens}, closed, [*forming, *closed])
        self.pending.extend(closed)
        while len(self.pending) > PENDING_MAX:
            self.pending.popleft()
            self.rows_dropped += 1

    def _write_pending(self) -> None:
        if not self.pending:
            return
        batch = list(self.pending)
        try:
            self.rows_written += store.write(self.engine, batch)
        except Exception as exc:  # noqa: BLE001  (kept and retried: a database outage must not stop the builder)
            self.write_failures += 1
            self.last_error = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
            event(log, "candles_write_failed", logging.WARNING, rows=len(batch), error=self.last_error)
            return
        self.pending.clear()
        self.last_error = ""

    def _report(self, now: float) -> None:
        b = self.builder
        self.redis.hset(keys.CANDLE_BUILDER, mapping={
            "owner": self.owner, "heartbeat": now, "ticks": self.ticks, "late_ticks": b.late_ticks,
            "volume_resets": b.volume_resets, "candles_closed": b.candles_closed,
            "rows_written": self.rows_written, "rows_pending": len(self.pending),
            "rows_dropped": self.rows_dropped, "write_failures": self.write_failures,
            "last_error": self.last_error,
        })


REPORT_STALE_SECS = 5.0  # the builder reports every second: silent this long, it is down
COUNTERS = ("ticks", "late_ticks", "volume_resets", "candles_closed", "rows_written", "rows_dropped",
            "write_failures")


def builder_report(client: redis.Redis, now: float) -> dict | None:
    """The builder's last report (`CANDLE_BUILDER`) with `up` (reported within
    REPORT_STALE_SECS), or None when no builder ever reported to this Redis."""
    fields = client.hgetall(keys.CANDLE_BUILDER)
    if not fields:
        return None
    heartbeat = float(fields.get("heartbeat") or 0)
    report: dict = {"up": now - heartbeat < REPORT_STALE_SECS, "owner": fields.get("owner", ""),
                    "age_secs": round(now - heartbeat, 1), "rows_pending": int(fields.get("rows_pending") or 0),
                    "last_error": fields.get("last_error", "")}
    report.update({name: int(float(fields.get(name) or 0)) for name in COUNTERS})
    return report
