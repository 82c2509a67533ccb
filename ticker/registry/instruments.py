"""The instrument registry: loaded from Kite's instruments dump into PostgreSQL, and mirrored
into Redis so every replica can check tokens and resolve "EXCHANGE:TRADINGSYMBOL" names on
the subscribe path in one round trip."""

from __future__ import annotations

import logging
from typing import Any

import redis
from kiteconnect import KiteConnect
from sqlalchemy import delete, insert, select, text
from sqlalchemy.orm import Session

from ticker.bus import keys
from ticker.registry.models import Instrument

log = logging.getLogger(__name__)

_COLUMNS = [c.name for c in Instrument.__table__.columns]
REGISTRY_LOCK_KEY = 0x7469636B  # PostgreSQL advisory lock id for registry writers ("tick")


def fetch_dump(api_root: str, api_key: str) -> list[dict[str, Any]]:
    """Kite's instruments dump, parsed by the official client."""
    rows = KiteConnect(api_key, root=api_root).instruments()
    for row in rows:
        row["exchange_token"] = int(row["exchange_token"])
        row["expiry"] = row["expiry"] or None
    return rows


def replace_all(session: Session, rows: list[dict[str, Any]]) -> int:
    """Replace the registry with `rows` in one transaction: readers see the old or the new."""
    if not rows:
        raise ValueError("refusing to replace the registry with an empty dump")
    # Loaders queue up behind each other instead of interleaving their deletes and inserts.
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": REGISTRY_LOCK_KEY})
    session.execute(delete(Instrument))
    session.execute(insert(Instrument), [{c: row[c] for c in _COLUMNS} for row in rows])
    session.commit()
    return len(rows)


def mirror_to_redis(client: redis.Redis, pairs: list[tuple[int, str]]) -> None:
    """Publish (token, "EXCHANGE:SYMBOL") pairs; RENAME swaps the new maps in atomically."""
    staging = {keys.REGISTRY_TOKENS: {}, keys.REGISTRY_SYMBOLS: {}}
    for token, symbol in pairs:
        staging[keys.REGISTRY_TOKENS][token] = symbol
        staging[keys.REGISTRY_SYMBOLS][symbol] = token
    pipe = client.pipeline()
    for key, mapping in staging.items():
        for start in range(0, len(mapping), 10_000):
            chunk = dict(list(mapping.items())[start : start + 10_000])
            pipe.hset(f"{key}:staging", mapping=chunk)
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
