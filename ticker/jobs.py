"""Beat jobs: one copy at a time (a Redis lock), and each run's outcome kept in Redis for /health.

Any periodic task wraps its body in `run_job(client, name, body)`: a second copy started while
the first runs (beat firing twice, an operator triggering it by hand) returns at once with
outcome "busy" instead of doing the work twice.

A job's failure is reported by /health's "jobs" check as a reason but does not make a replica
unhealthy: a replica still serves ticks when, say, the morning reload failed (yesterday's
registry stays in place). Shards and the registry have their own checks that do fail /health.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from ticker.bus import keys

log = logging.getLogger(__name__)

BUSY = "busy"
OK = "ok"
FAILED = "failed"


def record(client: redis.Redis, name: str, outcome: str, detail: str, started: float) -> None:
    """Store a run's outcome (and, when it succeeded, the time of the last success)."""
    status = {"last_run": started, "outcome": outcome, "detail": detail[:500],
              "duration_secs": round(time.time() - started, 3)}
    if outcome == OK:
        status["last_ok"] = started
    pipe = client.pipeline()
    pipe.hset(keys.job_status(name), mapping=status)
    pipe.sadd(keys.JOBS, name)
    pipe.execute()


def run_job(client: redis.Redis, name: str, body: Callable[[], Any], lock_secs: float,
            describe: Callable[[Any], str] = str) -> Any:
    """Run `body` unless another copy holds the job's lock; record the outcome. Exceptions are
    recorded and re-raised (so Celery's retry options still apply). Returns body's result,
    or BUSY if another copy is running."""
    lock = client.lock(keys.job_lock(name), timeout=lock_secs, blocking=False)
    if not lock.acquire():
        log.info("job %s is already running elsewhere: skipped", name)
        return BUSY
    started = time.time()
    try:
        result = body()
    except Exception as exc:
        record(client, name, FAILED, f"{type(exc).__name__}: {exc}", started)
        raise
    else:
        record(client, name, OK, describe(result), started)
        return result
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            log.warning("job %s outlived its %ss lock", name, lock_secs)


def job_statuses(client: redis.Redis) -> dict[str, dict[str, Any]]:
    """Every job's last run: {name: {last_run, outcome, detail, duration_secs, last_ok}}."""
    names = sorted(client.smembers(keys.JOBS))
    pipe = client.pipeline()
    for name in names:
        pipe.hgetall(keys.job_status(name))
    statuses = {}
    for name, status in zip(names, pipe.execute(), strict=True):
        statuses[name] = {
            "outcome": status.get("outcome"),
            "detail": status.get("detail") or None,
            "last_run": float(status["last_run"]) if status.get("last_run") else None,
            "last_ok": float(status["last_ok"]) if status.get("last_ok") else None,
            "duration_secs": float(status.get("duration_secs", 0)),
        }
    return statuses
