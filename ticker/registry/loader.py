"""Load the registry from Kite into PostgreSQL and its Redis mirror (CLI and beat use this)."""

from __future__ import annotations

import logging

from flask import Flask
from sqlalchemy import func, select

from ticker.bus.connection import redis_client
from ticker.db import session_for
from ticker.registry.instruments import fetch_dump, mirror_from_db, replace_all
from ticker.registry.models import Instrument

log = logging.getLogger(__name__)


def load_instruments(app: Flask) -> int:
    """Fetch the dump, replace the registry, refresh the mirror; returns the row count."""
    config = app.config
    rows = fetch_dump(config["KITE_API_ROOT"], config["KITE_API_KEY"])
    with session_for(config["DATABASE_URL"]) as session:
        count = replace_all(session, rows)
        mirror_from_db(session, redis_client(config["REDIS_URL"]))
    log.info("instrument registry loaded: %d instruments", count)
    return count


def registry_size(app: Flask) -> int:
    with session_for(app.config["DATABASE_URL"]) as session:
        return session.scalar(select(func.count()).select_from(Instrument)) or 0
