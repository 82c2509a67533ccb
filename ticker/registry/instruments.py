"""The instrument registry: loaded from Kite's instruments dump into PostgreSQL, and mirrored
into Redis so every replica can check tokens and resolve "EXCHANGE:TRADINGSYMBOL" names on
the subscribe path in one round trip."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ticker.bus import keys
from ticker.registry.dump import COLUMNS, BadRow, DumpError, DumpReport, copy_line, validated_rows
from ticker.registry.models import Instrument

log = logging.getLogger(__name__)

REGISTRY_LOCK_KEY = 0x7469636B  # PostgreSQL advisory lock id for registry writers ("tick")
# A dump under half of yesterday's size is a transfer cut short on a row boundary, not a market
# event (Kite's dump moves by a few thousand expiries and listings a day out of ~115,000).
MIN_SIZE_RATIO = 0.5
COPY_READ_CHARS = 1 << 16

__all__ = ["DumpError", "Registry", "ReloadReport", "mirror_from_db", "replace_from_dump"]


@dataclass
class ReloadReport:
    """What a reload changed, for the log, the CLI summary and the REGISTRY_RELOADED notice."""

    rows: int = 0
    bad_rows: list[BadRow] = field(default_factory=list)
    added: list[int] = field(default_factory=list)  # new tokens that are not a renumbering
    removed: list[int] = field(default_factory=list)  # tokens gone from the dump, not renumbered
    renumbered: dict[int, int] = field(default_factory=dict)  # old -> new token, same symbol
    resymbolled: dict[int, str] = field(default_factory=dict)  # token -> its new "EXCHANGE:SYMBOL"
    updated: int = 0  # rows whose other fields (price, lot size, ...) changed
    seconds: float = 0.0
    symbols: list[tuple[int, str]] = field(default_factory=list, repr=False)  # the new registry, for the mirror

    def notice(self) -> dict[str, Any]:
        """The REGISTRY_RELOADED payload: how by-symbol subscriptions must move."""
        return {"renumbered": {str(old): new for old, new in self.renumbered.items()}, "removed": self.removed}

    def summary(self) -> str:
        return (f"{self.rows:,} instruments: {len(self.added):,} added, {len(self.removed):,} removed, "
                f"{len(self.renumbered):,} renumbered, {len(self.resymbolled):,} renamed, "
                f"{self.updated:,} updated, {len(self.bad_rows):,} bad rows skipped, {self.seconds:.2f}s")


class _CopySource:
    """A read()-able text stream of COPY lines, pulled from an iterator of rows on demand."""

    def __init__(self, rows: Iterator[tuple]):
        self._lines = (copy_line(row) for row in rows)
        self._buffer = ""
        self.error: Exception | None = None  # psycopg2 wraps what read() raises; this keeps it

    def read(self, size: int = -1) -> str:
        try:
            return self._read(size)
        except Exception as exc:
            self.error = exc
            raise

    def _read(self, size: int) -> str:
        while size < 0 or len(self._buffer) < size:
            chunk = "".join(itertools.islice(self._lines, 2000))
            if not chunk:
                break
            self._buffer += chunk
        if size < 0:
            size = len(self._buffer)
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out


_COLUMN_LIST = ", ".join(COLUMNS)
_DIFF_QUERIES = {
    "renumbered": "SELECT o.instrument_token, s.instrument_token FROM instruments o "
                  "JOIN instruments_staging s USING (exchange, tradingsymbol) "
                  "WHERE o.instrument_token <> s.instrument_token",
    "gone": "SELECT o.instrument_token FROM instruments o WHERE NOT EXISTS "
            "(SELECT 1 FROM instruments_staging s WHERE s.instrument_token = o.instrument_token)",
    "new": "SELECT s.instrument_token FROM instruments_staging s WHERE NOT EXISTS "
           "(SELECT 1 FROM instruments o WHERE o.instrument_token = s.instrument_token)",
    "resymbolled": "SELECT s.instrument_token, s.exchange || ':' || s.tradingsymbol FROM instruments o "
                   "JOIN instruments_staging s USING (instrument_token) "
                   "WHERE (o.exchange, o.tradingsymbol) <> (s.exchange, s.tradingsymbol)",
}
_SWAP = [
    "DELETE FROM instruments o WHERE NOT EXISTS "
    "(SELECT 1 FROM instruments_staging s WHERE s.instrument_token = o.instrument_token)",
    f"INSERT INTO instruments ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} FROM instruments_staging "
    "ON CONFLICT (instrument_token) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS[1:])
    + f" WHERE ({', '.join('instruments.' + c for c in COLUMNS)}) IS DISTINCT FROM "
    f"({', '.join('EXCLUDED.' + c for c in COLUMNS)})",
]


def _diff(cursor, report: ReloadReport) -> None:
    cursor.execute(_DIFF_QUERIES["renumbered"])
    report.renumbered = dict(cursor.fetchall())
    cursor.execute(_DIFF_QUERIES["gone"])
    report.removed = sorted(t for (t,) in cursor.fetchall() if t not in report.renumbered)
    cursor.execute(_DIFF_QUERIES["new"])
    targets = set(report.renumbered.values())
    report.added = sorted(t for (t,) in cursor.fetchall() if t not in targets)
    cursor.execute(_DIFF_QUERIES["resymbolled"])
    report.resymbolled = dict(cursor.fetchall())


def replace_from_dump(session: Session, lines: Iterable[str], min_ratio: float = MIN_SIZE_RATIO) -> ReloadReport:
    """Validate the dump's `lines` as they stream in, COPY them into a staging table and swap
    them into `instruments` in one transaction: readers see the old registry or the new one,
    never a mix. Raises DumpError (nothing changed) for an unusable dump, or one smaller than
    `min_ratio` of the current registry (a truncated transfer that ended on a row boundary)."""
    started = time.perf_counter()
    report, dump = ReloadReport(), DumpReport()
    cursor = session.connection().connection.driver_connection.cursor()
    try:
        # Loaders queue up behind each other instead of interleaving their swaps.
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (REGISTRY_LOCK_KEY,))
        cursor.execute("CREATE TEMP TABLE instruments_staging (LIKE instruments) ON COMMIT DROP")
        source = _CopySource(validated_rows(lines, dump))
        try:
            cursor.copy_expert(f"COPY instruments_staging ({_COLUMN_LIST}) FROM STDIN", source, size=COPY_READ_CHARS)
        except psycopg2.Error:
            if source.error is not None:
                raise source.error from None  # the dump's fault (DumpError) or the fetch's
            raise
        report.rows, report.bad_rows, report.symbols = dump.rows, dump.bad, dump.symbols
        cursor.execute("SELECT count(*) FROM instruments")
        current = cursor.fetchone()[0]
        if report.rows < current * min_ratio:
            raise DumpError(f"the dump has {report.rows:,} instruments, under {min_ratio:.0%} of the "
                            f"{current:,} in the registry: refusing it as truncated")
        if current:
            _diff(cursor, report)
        else:  # a first load: everything is new, nothing to compare
            report.added = [token for token, _ in dump.symbols]
        cursor.execute(_SWAP[0])
        cursor.execute(_SWAP[1])
        report.updated = max(cursor.rowcount - len(report.added) - len(report.renumbered), 0)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        cursor.close()
    report.seconds = time.perf_counter() - started
    return report


def mirror_to_redis(client: redis.Redis, pairs: list[tuple[int, str]]) -> None:
    """Publish (token, "EXCHANGE:SYMBOL") pairs; RENAME swaps the new maps in atomically."""
    staging = {keys.REGISTRY_TOKENS: {}, keys.REGISTRY_SYMBOLS: {}}
    for token, symbol in pairs:
        staging[keys.REGISTRY_TOKENS][token] = symbol
        staging[keys.REGISTRY_SYMBOLS][symbol] = token
    pipe = client.pipeline()
    for key, mapping in staging.items():
        pipe.delete(f"{key}:staging")  # a crashed earlier mirror may have left one half written
        items = list(mapping.items())
        for start in range(0, len(items), 10_000):
            pipe.hset(f"{key}:staging", mapping=dict(items[start : start + 10_000]))
    for key in staging:
        pipe.rename(f"{key}:staging", key)
    pipe.execute()


def mirror_from_db(session: Session, client: redis.Redis) -> int:
    rows = session.execute(select(Instrument.instrument_token, Instrument.exchange, Instrument.tradingsymbol))
    pairs = [(token, f"{exchange}:{symbol}") for token, exchange, symbol in rows]
    if pairs:
        mirror_to_redis(client, pairs)
    return len(pairs)


class Registry:
    """Read side used by web replicas. Rebuilds the Redis mirror from PostgreSQL by itself
    when it is missing (Redis keeps nothing across a restart)."""

    def __init__(self, client: redis.Redis, session_factory):
        self.redis = client
        self.session_factory = session_factory

    def known(self, tokens: list[int]) -> list[bool]:
        self._ensure_mirrored()
        return [symbol is not None for symbol in self.redis.hmget(keys.REGISTRY_TOKENS, tokens)]

    def resolve(self, symbols: list[str]) -> list[int | None]:
        self._ensure_mirrored()
        return [int(t) if t else None for t in self.redis.hmget(keys.REGISTRY_SYMBOLS, symbols)]

    def size(self) -> int:
        self._ensure_mirrored()
        return self.redis.hlen(keys.REGISTRY_TOKENS)

    def _ensure_mirrored(self) -> None:
        if self.redis.exists(keys.REGISTRY_TOKENS):
            return
        if not self.redis.set(keys.REGISTRY_LOCK, "1", nx=True, ex=30):
            return  # another replica is rebuilding it; this lookup sees an empty registry
        try:
            with self.session_factory() as session:
                count = mirror_from_db(session, self.redis)
            log.info("registry mirrored to Redis from the database: %d instruments", count)
        finally:
            self.redis.delete(keys.REGISTRY_LOCK)


SEARCH_LIMIT_MAX = 100


def _like_prefix(text_: str) -> str:
    return text_.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def search(session: Session, q: str, exchange: str | None = None, segment: str | None = None,
           limit: int = 20) -> list[dict[str, Any]]:
    """Instruments whose tradingsymbol or name starts with `q` (case-insensitive), exact
    symbol first, then shorter symbols (the underlying before its derivatives)."""
    q = q.strip().upper()
    if ":" in q and exchange is None:
        exchange, q = q.split(":", 1)
    prefix = _like_prefix(q)
    query = select(Instrument).where(
        (Instrument.tradingsymbol.like(prefix)) | (func.upper(Instrument.name).like(prefix))
    )
    if exchange:
        query = query.where(Instrument.exchange == exchange.upper())
    if segment:
        query = query.where(Instrument.segment == segment.upper())
    query = query.order_by(
        (Instrument.tradingsymbol != q), func.length(Instrument.tradingsymbol), Instrument.tradingsymbol,
        Instrument.exchange,
    ).limit(min(limit, SEARCH_LIMIT_MAX))
    return [instrument_json(row) for row in session.scalars(query)]


def instrument_json(row: Instrument) -> dict[str, Any]:
    """An instrument as the HTTP API returns it (Kite's field names)."""
    return {
        "instrument_token": row.instrument_token,
        "exchange_token": row.exchange_token,
        "tradingsymbol": row.tradingsymbol,
        "symbol": row.symbol,
        "name": row.name,
        "exchange": row.exchange,
        "segment": row.segment,
        "instrument_type": row.instrument_type,
        "expiry": row.expiry.isoformat() if row.expiry else None,
        "strike": float(row.strike),
        "tick_size": float(row.tick_size),
        "lot_size": row.lot_size,
    }
