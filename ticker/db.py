"""The database: one engine per URL and process, sessions from it.

Every connection is bounded and live-checked, so a PostgreSQL that vanishes (stopped, or
unreachable with its packets silently dropped: no FIN, no RST) costs a caller a bounded wait
and an `OperationalError`, never a process stuck for good:

- a checked-out connection is pinged first (`pool_pre_ping`), and waiting for a free one in the
  pool ends after `pool_timeout_secs` (SQLAlchemy's `TimeoutError`);
- libpq gives up a connect after `connect_timeout_secs`, and TCP keepalives and
  `tcp_user_timeout` make the kernel fail a socket whose peer stopped answering, idle or not;
- in a web replica (gevent or eventlet, see `wait_cooperatively`) psycopg2 waits as a greenlet,
  every statement is ended by the server after `statement_timeout_secs`, and a reply that does
  not come within that and REPLY_MARGIN_SECS more ends the wait and closes the connection.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import psycopg2
from psycopg2 import extensions
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


# A connection whose peer went silent fails within about 10 + 5 x 3 = 25 s even while idle in
# the pool, where nothing is sent that could time out.
KEEPALIVE_IDLE_SECS = 10
KEEPALIVE_INTERVAL_SECS = 5
KEEPALIVE_COUNT = 3
TCP_USER_TIMEOUT_MS = 30_000  # data sent and not acknowledged this long: the peer is gone
# The server ends a statement at statement_timeout; its error then takes a round trip. A reply
# later than that is taken for a server (or a network path) that is gone.
REPLY_MARGIN_SECS = 2.0
POOL_SIZE = 5  # connections kept open per process
POOL_OVERFLOW = 5  # opened beyond them under a burst, closed when returned


@dataclass
class EngineSettings:
    """What `configure` sets for the engines created after it."""

    pool_timeout_secs: float = 5.0
    connect_timeout_secs: float = 5.0  # a server that has not completed the handshake by then is down
    statement_timeout_secs: float | None = None  # None: statements run as long as they need


_settings = EngineSettings()
_engines: dict[str, Engine] = {}


def configure(pool_timeout_secs: float, connect_timeout_secs: float, statement_timeout_secs: float | None) -> None:
    """Set how long a caller waits for a pooled connection, for a connect, and how long a
    statement may run (None or 0: no limit, for processes that run the registry reload's long
    COPYs). Applies to the engines created from now on; `create_app` calls it before any is."""
    _settings.pool_timeout_secs = pool_timeout_secs
    _settings.connect_timeout_secs = connect_timeout_secs
    _settings.statement_timeout_secs = statement_timeout_secs or None


def connect_args() -> dict[str, object]:
    """libpq connection parameters: connect timeout, keepalives and, when configured, the
    statement timeout."""
    args: dict[str, object] = {
        "connect_timeout": max(1, round(_settings.connect_timeout_secs)),  # libpq counts whole seconds
        "keepalives": 1,
        "keepalives_idle": KEEPALIVE_IDLE_SECS,
        "keepalives_interval": KEEPALIVE_INTERVAL_SECS,
        "keepalives_count": KEEPALIVE_COUNT,
        "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
    }
    if _settings.statement_timeout_secs:
        args["options"] = f"-c statement_timeout={round(_settings.statement_timeout_secs * 1000)}"
    return args


def engine_for(url: str) -> Engine:
    """This process's engine for `url`, created on first use."""
    if url not in _engines:
        # pool_pre_ping: a restarted PostgreSQL costs a reconnect, not an error to the caller.
        _engines[url] = create_engine(
            sqlalchemy_url(url), pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW,
            pool_timeout=_settings.pool_timeout_secs, connect_args=connect_args(),
        )
    return _engines[url]


def session_for(url: str) -> Session:
    return sessionmaker(engine_for(url), expire_on_commit=False)()


def _wait_bound_secs(connection) -> float | None:
    """How long a green wait for `connection` may last: a connect is bounded like libpq's own,
    anything else by the statement timeout and a margin; None when statements are unbounded."""
    if connection.status == extensions.STATUS_SETUP:
        return _settings.connect_timeout_secs
    if _settings.statement_timeout_secs is None:
        return None
    return _settings.statement_timeout_secs + REPLY_MARGIN_SECS


def wait_cooperatively(async_mode: str) -> None:
    """Make psycopg2 wait for the database as a greenlet (a web replica calls this right after
    monkey-patching): gevent needs psycogreen's wait callback; eventlet's `monkey_patch`
    installs its own. Either way each wait is bounded (`_wait_bound_secs`): past it the
    connection is closed and the caller gets an `OperationalError`. Under a wait callback
    psycopg2 refuses COPY, so code that runs in a replica reads with plain queries."""
    if async_mode == "gevent":
        import gevent
        from psycogreen.gevent import patch_psycopg

        patch_psycopg()
        timeout = gevent.Timeout
    elif async_mode == "eventlet":
        import eventlet

        timeout = eventlet.Timeout
    else:
        return
    wait = extensions.get_wait_callback()
    if wait is not None:
        extensions.set_wait_callback(_bounded(wait, timeout))


def _bounded(wait: Callable, timeout: Callable) -> Callable:
    """`wait` (a green wait callback), given up after `_wait_bound_secs`."""

    def bounded_wait(connection) -> None:
        secs = _wait_bound_secs(connection)
        if secs is None:
            return wait(connection)
        gone = psycopg2.OperationalError(f"no reply from the database within {secs:g}s")
        with timeout(secs, gone):  # psycopg2 closes the connection when a wait fails
            return wait(connection)

    return bounded_wait


def _forget_inherited_connections() -> None:
    # A forked child (a Celery prefork worker) must never use its parent's connections: two
    # processes on one socket read each other's replies. close=False leaves them to the parent.
    for engine in _engines.values():
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_inherited_connections)
