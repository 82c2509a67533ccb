"""Databases of their own, for tests that run a stack whose state must not leak into others."""

from __future__ import annotations

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from ticker.db import sqlalchemy_url
from ticker.registry import migrate


def fresh_database(url: str, upgrade: bool = True) -> str:
    """Drop and create the database at `url` (and apply the migrations); returns `url`."""
    parsed = make_url(sqlalchemy_url(url))
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
    admin.dispose()
    migrate.create_database(url)
    if upgrade:
        migrate.upgrade(url)
    return url
