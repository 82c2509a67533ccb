"""Run Alembic migrations from code (the `flask db` commands and the tests use this)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from ticker.config import ROOT
from ticker.db import sqlalchemy_url


def alembic_config(database_url: str) -> AlembicConfig:
    config = AlembicConfig(str(ROOT / "migrations" / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


def _on_server(database_url: str, statement) -> object:
    """Run `statement(connection, database name)` on the server's `postgres` database."""
    url = make_url(sqlalchemy_url(database_url))
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            return statement(connection, url.database)
    finally:
        admin.dispose()


def create_database(database_url: str) -> bool:
    """Create the database named in `database_url`; False if it already exists."""

    def create(connection, name: str) -> bool:
        if connection.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}):
            return False
        connection.execute(text(f'CREATE DATABASE "{name}"'))
        return True

    return bool(_on_server(database_url, create))


def recreate_database(database_url: str, migrate: bool = True) -> str:
    """Drop the database (closing its sessions), create it again and, unless told not to,
    migrate it to head; returns `database_url`. For tests and benchmarks: all in it is lost."""
    _on_server(database_url, lambda c, name: c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')))
    create_database(database_url)
    if migrate:
        upgrade(database_url)
    return database_url
