"""Beat jobs: one copy at a time (a Redis lock), and each run's outcome kept in PostgreSQL
(the `job_status` table) for /health and /metrics, where it outlives a Redis restart.

Any periodic task wraps its body in `run_job(client, database_url, name, body)`: a second copy
started while the first runs (beat firing twice, an operator triggering it by hand) returns at
once with outcome "busy" instead of doing the work twice.

A job's failure is reported by /health's "jobs" check as a reason but does not make a replica
unhealthy: a replica still serves ticks when, say, the morning reload failed (yesterday's
registry stays in place). Shards and the registry have their own checks that do fail /health.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from ticker.bus import keys
from ticker.db import session_for
from ticker.registry.models import JobStatus

log = logging.getLogger(__name__)

BUSY = "busy"
OK = "ok"
FAILED = "failed"
NEVER_RUN = "never_run"  # /health's outcome of a known job with no run recorded yet

TOKEN_CHECK = "token_check"  # tasks/accounts.py
CANDLE_PARTITIONS = "candle_partitions"  # tasks/candles.py
# Every beat job, as /health lists it even before its first run: name -> when it runs.
KNOWN_JOBS = {
    "registry_reload": "every trading morning after Kite's dump (and at a worker's start when empty)",
    TOKEN_CHECK: "at a worker's start, after Kite's 06:00 IST expiry, and every quarter hour",
    CANDLE_PARTITIONS: "at a worker's start and every hour",
}
DETAIL_CHARS = 500  # a summary or an error message, not a traceback


def record(database_url: str, name: str, outcome: str, detail: str, started: float) -> None:
    """Store a run's outcome (and, when it succeeded, its start as the last success);
    `started` is epoch seconds."""
    started_at = datetime.fromtimestamp(started, UTC)
    row = {"name": name, "last_run": started_at, "outcome": outcome, "detail": detail[:DETAIL_CHARS],
           "duration_secs": round(time.time() - started, 3), "last_ok": started_at if outcome == OK else None}
    statement = insert(JobStatus).values(row)
    statement = statement.on_conflict_do_update(index_elements=[JobStatus.name], set_={
        **{column: statement.excluded[column] for column in row if column not in ("name", "last_ok")},
        "last_ok": func.coalesce(statement.excluded.last_ok, JobStatus.last_ok),
    })
    with session_for(database_url) as session:
        session.execute(statement)
        session.commit()


def _record_safely(database_url: str, name: str, outcome: str, detail: str, started: float) -> None:
    try:
        record(database_url, name, outcome, detail, started)
    except Exception:  # noqa: BLE001  (the job's own outcome stands; the log says why it is not shown)
        log.exception("job %s: could not record its %s outcome in the database", name, outcome)


def run_job(client: redis.Redis, database_url: str, name: str, body: Callable[[], Any], lock_secs: float,
            describe: Callable[[Any], str] = str) -> Any:
    """Run `body` unless another copy holds the job's lock (in Redis, on `client`); record the
    outcome in the database at `database_url`. Exceptions are recorded and re-raised (so
    Celery's retry options still apply). Returns body's result, or BUSY if another copy is
    running."""
    lock = client.lock(keys.job_lock(name), timeout=lock_secs, blocking=False)
    if not lock.acquire():
        log.info("job %s is already running elsewhere: skipped", name)
        return BUSY
    started = time.time()
    try:
        result = body()
    except Exception as exc:
        _record_safely(database_url, name, FAILED, f"{type(exc).__name__}: {exc}", started)
        raise
    else:
        _record_safely(database_url, name, OK, describe(result), started)
        return result
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:  # expired (the job ran past it) or lost with Redis's state
            log.warning("job %s no longer held its lock when it ended after %.1fs (the lock lasts %ss: it ran "
                        "past it, or Redis lost it)", name, time.time() - started, lock_secs)


def _epoch(value: datetime | None) -> float | None:
    return value.timestamp() if value else None


def job_statuses(session: Session) -> dict[str, dict[str, Any]]:
    """Every job's last run: {name: {last_run, outcome, detail, duration_secs, last_ok}},
    times in epoch seconds (last_ok None if it never succeeded)."""
    return {
        row.name: {"outcome": row.outcome, "detail": row.detail or None, "last_run": _epoch(row.last_run),
                   "last_ok": _epoch(row.last_ok), "duration_secs": row.duration_secs}
        for row in session.scalars(select(JobStatus).order_by(JobStatus.name))
    }
