"""The instrument registry: loaded from Kite's instruments dump into PostgreSQL, and mirrored
into Redis so every replica can check tokens and resolve "EXCHANGE:TRADINGSYMBOL" names on
the subscribe path in one round trip."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import psycopg2.errors
import redis
from sqlalchemy import func, select, tuple_
from sqlalchemy.orm import Session

from ticker.bus import keys
from ticker.registry.dump import COLUMNS, COPY_OPTIONS, BadRow, DumpError, DumpReport, copy_lines
from ticker.registry.mirror import (
    REBUILD_LOCK_SECS,
    MirrorUpdate,
    copy_pairs,
    fingerprint,
    parse_pairs,
    query_pairs,
    write_mirror,
)
from ticker.registry.models import Instrument

log = logging.getLogger(__name__)

REGISTRY_LOCK_KEY = 0x7469636B  # PostgreSQL advisory lock id for registry writers ("tick")
# A dump under half of yesterday's size is a transfer cut short on a row boundary, not a market
# event (Kite's dump moves by a few thousand expiries and listings a day out of ~115,000).
MIN_SIZE_RATIO = 0.5
COPY_LINES_PER_READ = 1000  # ~85 KB of CSV per message to PostgreSQL
# A first load drops the table's indexes while it fills it, unless a reader holds the table
# this long; then it loads with the indexes in place.
INDEX_LOCK_TIMEOUT = "2s"

__all__ = ["DumpError", "MirrorUpdate", "Registry", "ReloadReport", "exchanges_of", "mirror_from_db",
           "replace_from_dump", "tokens_by_symbol", "tokens_in"]


@dataclass
class ReloadReport:
    """What a reload changed, for the log, the CLI summary and the REGISTRY_RELOADED notice."""

    rows: int = 0
    bad_rows: list[BadRow] = field(default_factory=list)
    added: list[int] = field(default_factory=list)  # new tokens that are not a renumbering
    removed: list[int] = field(default_factory=list)  # tokens gone from the dump, not renumbered
    renumbered: dict[int, int] = field(default_factory=dict)  # old -> new token, same symbol
    resymbolled: dict[int, str] = field(default_factory=dict)  # token -> its new "EXCHANGE:SYMBOL"
    updated: int = 0  # kept tokens whose row changed (price, lot size, symbol, ...)
    seconds: float = 0.0
    # The new registry, token -> "EXCHANGE:SYMBOL", and its fingerprint, for the mirror.
    symbols: dict[int, str] = field(default_factory=dict, repr=False)
    fingerprint: str = ""

    def notice(self) -> dict[str, Any]:
        """The REGISTRY_RELOADED payload: how by-symbol subscriptions must move."""
        return {"renumbered": {str(old): new for old, new in self.renumbered.items()}, "removed": self.removed}

    def summary(self) -> str:
        return (f"{self.rows:,} instruments: {len(self.added):,} added, {len(self.removed):,} removed, "
                f"{len(self.renumbered):,} renumbered, {len(self.resymbolled):,} renamed, "
                f"{self.updated:,} updated, {len(self.bad_rows):,} bad rows skipped, {self.seconds:.2f}s")


class _CopySource:
    """A read()-able stream of COPY text, pulled from an iterator of lines on demand."""

    def __init__(self, lines: Iterator[str]):
        self._lines = lines
        self.error: Exception | None = None  # psycopg2 wraps what read() raises; this keeps it

    def read(self, size: int = -1) -> str:  # psycopg2 takes any length back, "" ending the data
        try:
            return "".join(itertools.islice(self._lines, COPY_LINES_PER_READ))
        except Exception as exc:
            self.error = exc
            raise


_COLUMN_LIST = ", ".join(COLUMNS)
_UPDATE_CHANGED = (
    "UPDATE instruments o SET " + ", ".join(f"{c} = s.{c}" for c in COLUMNS[1:])
    + " FROM instruments_staging s WHERE o.instrument_token = s.instrument_token AND "
    f"({', '.join('o.' + c for c in COLUMNS[1:])}) IS DISTINCT FROM ({', '.join('s.' + c for c in COLUMNS[1:])})"
)
# The token lists go as bigint[]: a bigint = ANY(integer[]) is searched element by element per row.
_DELETE_GONE = "DELETE FROM instruments WHERE instrument_token = ANY(%s::bigint[])"
_INSERT_NEW = (f"INSERT INTO instruments ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} FROM instruments_staging "
               "WHERE instrument_token = ANY(%s::bigint[])")
# Each index of the table, with the SQL that drops it and the SQL that builds it again.
_INDEXES = """
SELECT coalesce('ALTER TABLE instruments DROP CONSTRAINT ' || quote_ident(c.conname),
                'DROP INDEX ' || i.indexrelid::regclass::text),
       coalesce('ALTER TABLE instruments ADD CONSTRAINT ' || quote_ident(c.conname) || ' '
                || pg_get_constraintdef(c.oid), pg_get_indexdef(i.indexrelid))
FROM pg_index i LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.contype IN ('p', 'u')
WHERE i.indrelid = 'instruments'::regclass ORDER BY c.conname IS NULL"""


def _copy(cursor, table: str, lines: Iterable[str], dump: DumpReport) -> None:
    """Stream the validated dump into `table`; DumpError (or the fetch's error) if it is unusable."""
    source = _CopySource(copy_lines(lines, dump))
    try:
        cursor.copy_expert(f"COPY {table} ({_COLUMN_LIST}) FROM STDIN WITH ({COPY_OPTIONS})", source)
    except psycopg2.Error:
        if source.error is not None:
            raise source.error from None  # the dump's fault (DumpError) or the fetch's
        raise


def _changes(old: dict[int, str], new: dict[int, str], report: ReloadReport) -> tuple[dict, dict]:
    """Fill in the report's changes from the old and new token -> "EXCHANGE:SYMBOL" maps;
    returns the pairs that went (tokens gone or resymbolled) and came (new or resymbolled)."""
    went = {token: symbol for token, symbol in old.items() if new.get(token) != symbol}
    came = {token: symbol for token, symbol in new.items() if old.get(token) != symbol}
    token_of = {symbol: token for token, symbol in came.items()}
    report.renumbered = {token: token_of[symbol] for token, symbol in went.items() if symbol in token_of}
    report.removed = sorted(token for token in went if token not in new and token not in report.renumbered)
    targets = set(report.renumbered.values())
    report.added = sorted(token for token in came if token not in old and token not in targets)
    report.resymbolled = {token: symbol for token, symbol in came.items() if token in old}
    return went, came


def _reload(cursor, lines: Iterable[str], dump: DumpReport, report: ReloadReport, mirror: MirrorUpdate,
            current: int, min_ratio: float) -> None:
    """Into a full table: COPY into a staging table, then delete, update and insert only the
    rows that changed (a few thousand on a trading morning)."""
    cursor.execute("CREATE TEMP TABLE instruments_staging (LIKE instruments) ON COMMIT DROP")
    _copy(cursor, "instruments_staging", lines, dump)
    if dump.rows < current * min_ratio:
        raise DumpError(f"the dump has {dump.rows:,} instruments, under {min_ratio:.0%} of the "
                        f"{current:,} in the registry: refusing it as truncated")
    old_pairs = copy_pairs(cursor)
    old, new = parse_pairs(old_pairs), dump.symbols
    went, came = _changes(old, new, report)
    mirror.plan(went, came, new, fingerprint(old_pairs), len(old))
    cursor.execute(_DELETE_GONE, ([t for t in went if t not in new],))
    cursor.execute(_UPDATE_CHANGED)
    report.updated = cursor.rowcount
    cursor.execute(_INSERT_NEW, ([t for t in came if t not in old],))


def _first_load(cursor, lines: Iterable[str], dump: DumpReport, report: ReloadReport, mirror: MirrorUpdate) -> None:
    """Into an empty table: COPY straight into it with its indexes dropped, then build them
    again (one sort each beats ~100,000 inserts into each) while the mirror is written.
    Readers wait for the commit, and would have found nothing before it anyway."""
    indexes = _drop_indexes(cursor)
    _copy(cursor, "instruments", lines, dump)
    mirror.whole(dump.symbols)
    for definition in indexes:
        cursor.execute(definition)
    report.added = list(dump.symbols)


def _drop_indexes(cursor) -> list[str]:
    """Drop the table's indexes (and the constraints they back) in this transaction; returns
    the SQL that builds them again, or [] (nothing dropped) if a reader holds the table for
    longer than INDEX_LOCK_TIMEOUT or another table's foreign key needs one."""
    cursor.execute(_INDEXES)
    indexes = cursor.fetchall()
    cursor.execute("SAVEPOINT drop_indexes")
    cursor.execute("SET LOCAL lock_timeout = %s", (INDEX_LOCK_TIMEOUT,))
    try:
        for drop, _ in indexes:
            cursor.execute(drop)
    except (psycopg2.errors.LockNotAvailable, psycopg2.errors.DependentObjectsStillExist):
        cursor.execute("ROLLBACK TO SAVEPOINT drop_indexes")  # also undoes the lock_timeout
        return []
    cursor.execute("SET LOCAL lock_timeout = DEFAULT")
    cursor.execute("RELEASE SAVEPOINT drop_indexes")
    return [build for _, build in indexes]


def replace_from_dump(session: Session, lines: Iterable[str], mirror: MirrorUpdate,
                      min_ratio: float = MIN_SIZE_RATIO) -> ReloadReport:
    """Validate the dump's `lines` as they stream in, COPY them into PostgreSQL and swap them
    into `instruments` in one transaction: readers see the old registry or the new one,
    never a mix. Raises DumpError (nothing changed) for an unusable dump, or one smaller than
    `min_ratio` of the current registry (a truncated transfer that ended on a row boundary).
    `mirror` gets ready meanwhile; call its `finish` once this returns."""
    started = time.perf_counter()
    report, dump = ReloadReport(), DumpReport()
    cursor = session.connection().connection.driver_connection.cursor()
    try:
        # Loaders queue up behind each other instead of interleaving their swaps.
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (REGISTRY_LOCK_KEY,))
        cursor.execute("SELECT count(*) FROM instruments")
        current = cursor.fetchone()[0]
        if current:
            _reload(cursor, lines, dump, report, mirror, current, min_ratio)
        else:
            _first_load(cursor, lines, dump, report, mirror)
        report.rows, report.bad_rows, report.symbols = dump.rows, dump.bad, dump.symbols
        report.fingerprint = fingerprint(copy_pairs(cursor))  # of exactly what commits
        session.commit()
    except BaseException:
        session.rollback()
        mirror.abandon()
        raise
    finally:
        cursor.close()
    report.seconds = time.perf_counter() - started
    return report


def mirror_from_db(session: Session, client: redis.Redis) -> int:
    """Write the whole mirror from the registry in PostgreSQL; returns its size. Reads with a
    plain query (a web replica's psycopg2 refuses COPY) and names the registry with the same
    fingerprint the loader's COPY gives it."""
    pairs_text = query_pairs(session)
    pairs = parse_pairs(pairs_text)
    if pairs:
        write_mirror(client, pairs, fingerprint(pairs_text))
    return len(pairs)


class Registry:
    """Read side used by web replicas: lookups from the Redis mirror.

    Redis keeps nothing across a restart. A replica that finds the mirror missing rebuilds it
    from PostgreSQL, unless another replica (or a reload) holds keys.REGISTRY_LOCK to do it;
    until the mirror is back, lookups are answered from PostgreSQL for exactly the tokens and
    names asked, so a lost mirror never makes a valid instrument unknown. The mirror is written
    under staging names and renamed in at once, so once it exists it is whole.

    `spawn(fn)`, when given, runs the rebuild in the background (a replica passes its async
    mode's `start_background_task`): the client whose lookup found the mirror gone is answered
    from PostgreSQL at once instead of waiting seconds for ~100,000 instruments to be copied."""

    def __init__(self, client: redis.Redis, session_factory, spawn: Callable[[Callable[[], Any]], Any] | None = None):
        self.redis = client
        self.session_factory = session_factory
        self.spawn = spawn

    def known(self, tokens: list[int]) -> list[bool]:
        """Whether each of `tokens` is an instrument of the registry."""
        return [exchange is not None for exchange in self.exchanges(tokens)]

    def exchanges(self, tokens: list[int]) -> list[str | None]:
        """The Kite exchange code (the dump's `exchange` column) of each of `tokens`, None for
        one the registry does not hold. The same one HMGET as `known`: the mirror's token ->
        "EXCHANGE:TRADINGSYMBOL" hash carries it, and a reload rewrites it with the registry."""
        if self._mirrored():
            symbols = self.redis.hmget(keys.REGISTRY_TOKENS, tokens)
            return [symbol.partition(":")[0] if symbol is not None else None for symbol in symbols]
        with self.session_factory() as session:
            found = exchanges_of(session, tokens)
        return [found.get(token) for token in tokens]

    def resolve(self, symbols: list[str]) -> list[int | None]:
        """The token of each "EXCHANGE:TRADINGSYMBOL" of `symbols`, None for an unknown one."""
        if self._mirrored():
            return [int(t) if t else None for t in self.redis.hmget(keys.REGISTRY_SYMBOLS, symbols)]
        with self.session_factory() as session:
            token_of = tokens_by_symbol(session, symbols)
        return [token_of.get(symbol) for symbol in symbols]

    def size(self) -> int:
        """Instruments in the registry."""
        if self._mirrored():
            return self.redis.hlen(keys.REGISTRY_TOKENS)
        with self.session_factory() as session:
            return session.scalar(select(func.count()).select_from(Instrument)) or 0

    def _mirrored(self) -> bool:
        """Whether the mirror is there to read; when it is not, rebuild it unless someone else
        is (then the caller reads PostgreSQL)."""
        if self.redis.exists(keys.REGISTRY_TOKENS):
            return True
        # Not thread-local: with `spawn`, another greenlet (or thread) rebuilds and releases it.
        lock = self.redis.lock(keys.REGISTRY_LOCK, timeout=REBUILD_LOCK_SECS, blocking=False, thread_local=False)
        if not lock.acquire():
            return False  # another replica, or a reload, is writing it
        if self.spawn is None:
            return self._rebuild(lock) > 0
        self.spawn(lambda: self._rebuild(lock))
        return False  # this lookup reads PostgreSQL; the next ones find the mirror

    def _rebuild(self, lock) -> int:
        try:
            with self.session_factory() as session:
                count = mirror_from_db(session, self.redis)
        except Exception:
            if self.spawn is None:
                raise
            log.exception("the registry mirror could not be rebuilt: lookups read PostgreSQL until it is")
            return 0
        finally:
            try:
                lock.release()
            except redis.exceptions.RedisError:  # LockError included
                log.warning("the registry mirror's lock was lost during its rebuild (%ss)", REBUILD_LOCK_SECS)
        # An empty registry (before the first load) is tried again at each lookup: not worth a line each time.
        level = logging.INFO if count else logging.DEBUG
        log.log(level, "registry mirrored to Redis from the database: %d instruments", count)
        return count


def tokens_in(session: Session, tokens: list[int]) -> set[int]:
    """Those of `tokens` that the registry in PostgreSQL holds."""
    return set(session.scalars(select(Instrument.instrument_token).where(Instrument.instrument_token.in_(tokens))))


def exchanges_of(session: Session, tokens: list[int]) -> dict[int, str]:
    """token -> exchange, from PostgreSQL, for those of `tokens` the registry holds."""
    rows = session.execute(select(Instrument.instrument_token, Instrument.exchange)
                           .where(Instrument.instrument_token.in_(tokens)))
    return dict(rows.tuples().all())


def tokens_by_symbol(session: Session, symbols: list[str]) -> dict[str, int]:
    """"EXCHANGE:TRADINGSYMBOL" -> token, from PostgreSQL, for those of `symbols` it holds."""
    wanted = [tuple(symbol.split(":", 1)) for symbol in symbols if ":" in symbol]
    if not wanted:
        return {}
    rows = session.execute(select(Instrument.exchange, Instrument.tradingsymbol, Instrument.instrument_token)
                           .where(tuple_(Instrument.exchange, Instrument.tradingsymbol).in_(wanted)))
    return {f"{exchange}:{tradingsymbol}": token for exchange, tradingsymbol, token in rows}


SEARCH_LIMIT_MAX = 100


MAX_TOKEN = 2**32 - 1  # Kite's instrument tokens are unsigned 32-bit


def _like_escape(text_: str) -> str:
    return text_.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def search(session: Session, q: str, exchange: str | None = None, segment: str | None = None,
           limit: int = 20, entitled: frozenset[str] | None = None) -> list[dict[str, Any]]:
    """Instruments whose tradingsymbol or name holds `q` (case-insensitive), or whose token is
    `q` when it is a number: the token first, then the exact symbol, then symbols and names that
    start with `q`, then those holding it further in ("SENSEX SIXTY" finds "BSE SENSEX SIXTY
    65:35"), shorter symbols first (the underlying before its derivatives). Only those of the
    `entitled` exchanges when that is given (ticker.web.entitlements; empty: none). A word inside
    is found through the pg_trgm indexes (migration 0005)."""
    if entitled is not None and not entitled:
        return []
    q = q.strip().upper()
    head, colon, rest = q.partition(":")
    if colon and exchange is None and head.isalpha():  # "BSE:SENSEX"; "65:35" is a symbol's words
        exchange, q = head, rest
    escaped = _like_escape(q)
    symbol, name = Instrument.tradingsymbol, func.upper(Instrument.name)
    matches = symbol.like(f"%{escaped}%") | name.like(f"%{escaped}%")
    by_token = Instrument.instrument_token == int(q) if q.isdigit() and int(q) <= MAX_TOKEN else None
    if by_token is not None:
        matches = matches | by_token
    query = select(Instrument).where(matches)
    if exchange:
        query = query.where(Instrument.exchange == exchange.upper())
    if segment:
        query = query.where(Instrument.segment == segment.upper())
    if entitled is not None:
        query = query.where(Instrument.exchange.in_(sorted(entitled)))
    starts = symbol.like(f"{escaped}%") | name.like(f"{escaped}%")
    order = [symbol != q, ~starts, func.length(symbol), symbol, Instrument.exchange]
    if by_token is not None:
        order.insert(0, ~by_token)
    query = query.order_by(*order).limit(min(limit, SEARCH_LIMIT_MAX))
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
