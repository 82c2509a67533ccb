"""HTTP routes: health for load balancers and operators."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from flask import Blueprint, current_app, jsonify
from sqlalchemy import text

from ticker.bus import assignment, keys
from ticker.bus.connection import redis_client
from ticker.bus.lease import SHARD_STALE_SECS, shard_live, shard_states
from ticker.db import engine_for
from ticker.feed.shard import SILENCE_SECS
from ticker.web.jobs_health import check_jobs
from ticker.web.replica import replica

bp = Blueprint("web", __name__)



def _check_redis() -> dict[str, Any]:
    redis_client(current_app.config["REDIS_URL"]).ping()
    return {"ok": True}


def _check_database() -> dict[str, Any]:
    with engine_for(current_app.config["DATABASE_URL"]).connect() as connection:
        connection.execute(text("SELECT 1"))
    return {"ok": True}


def _check_shards() -> dict[str, Any]:
    client = redis_client(current_app.config["REDIS_URL"])
    now = time.time()
    shards = {
        slot: {
            "state": state.get("state"),
            "tokens": int(state.get("tokens", 0)),
            "error": state.get("error") or None,  # stands now; cleared once the feed streams again
            "last_error": state.get("last_error") or None,
            "last_error_at": float(state["last_error_at"]) if state.get("last_error_at") else None,
            "live": shard_live(state, now),
        }
        for slot, state in shard_states(client).items()
    }
    live = any(s["live"] for s in shards.values())
    reason = None if live else f"no shard streaming in the last {SHARD_STALE_SECS}s (silence limit {SILENCE_SECS:.0f}s)"
    total, used = assignment.capacity(client)
    pool = {"capacity": total, "assigned": used, "overflow": client.scard(keys.ASSIGNMENT_OVERFLOW)}
    return {"ok": live, "shards": shards, "pool": pool, **({"reason": reason} if reason else {})}


def _check_registry() -> dict[str, Any]:
    size = replica().registry.size()
    return {"ok": size > 0, "instruments": size, **({} if size else {"reason": "instrument registry is empty"})}


CHECKS: dict[str, Callable[[], dict[str, Any]]] = {
    "redis": _check_redis,
    "database": _check_database,
    "shards": _check_shards,
    "registry": _check_registry,
    "jobs": check_jobs,  # never fails /health: lists failed jobs and invalid Kite tokens as reasons
}


@bp.get("/health")
def health():
    """200 when this replica can serve ticks; 503 with the reasons when it cannot."""
    results = {}
    for name, check in CHECKS.items():
        try:
            results[name] = check()
        except Exception as exc:  # noqa: BLE001  (a failing dependency is a result, not a crash)
            results[name] = {"ok": False, "reason": f"{type(exc).__name__}: {exc}"}
    healthy = all(r["ok"] for r in results.values())
    return jsonify({"status": "ok" if healthy else "unavailable", "checks": results}), 200 if healthy else 503


@bp.get("/health/live")
def live():
    """Liveness: the process answers. Cheap; touches no dependency."""
    return jsonify({"status": "ok"})
