"""The database: one engine per URL and process, sessions from it."""

from __future__ import annotations

from functools import lru_cache

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker


class Base(DeclarativeBase):
    pass


def sqlalchemy_url(url: str) -> str:
    """Pin the psycopg2 driver (SQLAlchemy 2.1 defaults to psycopg 3) and accept Heroku's
    `postgres://` spelling."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


@lru_cache(maxsize=4)
def engine_for(url: str) -> Engine:
    # pool_pre_ping: a restarted PostgreSQL costs a reconnect, not an error to the caller.
    return create_engine(sqlalchemy_url(url), pool_pre_ping=True, pool_size=5, max_overflow=5)


def session_for(url: str) -> Session:
    return sessionmaker(engine_for(url), expire_on_commit=False)()
