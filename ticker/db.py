"""The database: one engine per URL and process, sessions from it."""

from __future__ import annotations

import os

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


_engines: dict[str, Engine] = {}


def engine_for(url: str) -> Engine:
    """This process's engine for `url`, created on first use."""
    if url not in _engines:
        # pool_pre_ping: a restarted PostgreSQL costs a reconnect, not an error to the caller.
        _engines[url] = create_engine(sqlalchemy_url(url), pool_pre_ping=True, pool_size=5, max_overflow=5)
    return _engines[url]


def session_for(url: str) -> Session:
    return sessionmaker(engine_for(url), expire_on_commit=False)()


def _forget_inherited_connections() -> None:
    # A forked child (a Celery prefork worker) must never use its parent's connections: two
    # processes on one socket read each other's replies. close=False leaves them to the parent.
    for engine in _engines.values():
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_inherited_connections)
