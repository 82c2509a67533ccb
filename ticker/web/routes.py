"""HTTP routes: health for load balancers and operators."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from flask import Blueprint, current_app, jsonify
from sqlalchemy import text

from ticker.bus import assignment, keys
from ticker.bus.connection import redis_client
from ticker.bus.lease import SHARD_STALE_SECS, shard_live, shard_states
from ticker.db import engine_for
from ticker.web import auth
from ticker.web.jobs_health import check_jobs
from ticker.web.replica import replica

bp = Blueprint("web", __name__)



def _probe() -> Any:
    """Health checks read Redis through a client that gives up within a second."""
    return redis_client(current_app.config["REDIS_URL"], "probe")


def _check_redis() -> dict[str, Any]:
    _probe().ping()
    return {"ok": True}


def _check_database() -> dict[str, Any]:
    with engine_for(current_app.config["DATABASE_URL"]).connect() as connection:
        connection.execute(text("SELECT 1"))
    return {"ok": True}


def _check_shards() -> dict[str, Any]:
    """The upstream pool as the cluster reports it: not ok when no shard streams at all (no
    tick can flow), degraded when some slot with work is down, tokens wait for a usable slot,
    or demand exceeds the pool; each with the reason."""
    client = _probe()
    now = time.time()
    states = shard_states(client)
    work = Counter(client.hvals(keys.ASSIGNED_SLOT))
    down_accounts = assignment.accounts_down(client)
    total, _ = assignment.capacity(client)
    waiting, overflow = client.scard(keys.ASSIGNMENT_WAITING), client.scard(keys.ASSIGNMENT_OVERFLOW)
    slots = {slot: _slot_report(states.get(slot, {}), work[slot], now)
             for slot in sorted(set(states) | set(work) | set(assignment.pool_slots(client)))}
    live = any(report["live"] for report in slots.values())
    reasons = _pool_reasons(slots, down_accounts, waiting, overflow)
    if not live:
        reasons.insert(0, f"no shard streaming (each reports every second; silent {SHARD_STALE_SECS}s is down)")
    report: dict[str, Any] = {
        "ok": live, "degraded": bool(reasons), "slots": slots, "accounts_down": down_accounts,
        "pool": {"capacity": total, "assigned": sum(work.values()), "waiting": waiting, "overflow": overflow},
    }
    if reasons:
        report["reason"] = "; ".join(reasons)
    return report


def _slot_report(state: dict[str, str], tokens: int, now: float) -> dict[str, Any]:
    live = shard_live(state, now)
    reported = state.get("state")
    if reported and not live and now - float(state.get("heartbeat") or 0) >= SHARD_STALE_SECS:
        reported = f"silent (last said {reported})"  # a shard that stopped reporting: killed, or stuck
    report: dict[str, Any] = {"state": reported or "no shard", "tokens": tokens, "live": live}
    if state.get("heartbeat"):
        report["reported_secs_ago"] = round(now - float(state["heartbeat"]), 1)
    if not live and state.get("error"):  # the error that stands now (a shard clears it once it streams)
        report["error"] = state["error"]
    if state.get("recorder"):  # RECORD_DIR set (ticker.feed.recorder)
        report["recorder"] = {"state": state["recorder"], "errors": int(state.get("recorder_errors") or 0),
                              **({"error": state["recorder_error"]} if state.get("recorder_error") else {})}
    return report


def _pool_reasons(slots: dict[str, dict], down: dict[str, str], waiting: int, overflow: int) -> list[str]:
    reasons = []
    if down:
        accounts = ", ".join(f"{key} ({reason})" for key, reason in sorted(down.items()))
        reasons.append(f"Kite accounts that cannot stream: {accounts}; log in again (/kite/login/<api_key>)")
    dark = [f"{slot} ({report['state']})" for slot, report in slots.items() if report["tokens"] and not report["live"]]
    if dark:
        reasons.append(f"slots with instruments that are not streaming: {', '.join(dark)}")
    if waiting:
        reasons.append(f"{waiting} instruments wait for a slot that can stream")
    if overflow:
        reasons.append(f"{overflow} instruments beyond the pool's capacity (add a Kite account)")
    failing = [f"{slot} ({report['recorder'].get('error', '')})" for slot, report in slots.items()
               if report.get("recorder", {}).get("state") == "failing"]
    if failing:
        reasons.append(f"recorders failing (ticks flow; frames go unrecorded): {', '.join(failing)}")
    return reasons


def _check_registry() -> dict[str, Any]:
    # The mirror's size through the probe; only a missing mirror costs more (the registry then
    # rebuilds it, or counts in PostgreSQL).
    size = _probe().hlen(keys.REGISTRY_TOKENS) or replica().registry.size()
    return {"ok": size > 0, "instruments": size, **({} if size else {"reason": "instrument registry is empty"})}


def _check_delivery() -> dict[str, Any]:
    """This replica's own tick path: its listener hears from Redis, and its loops keep time."""
    state = replica()
    listener = state.listener.report() if state.config["WEB_TICK_DELIVERY"] else {"ok": True}
    loops = {loop.name: loop.report() for loop in state.loops}
    late = [name for name, loop in loops.items() if not loop["ok"]]
    reasons = [listener["reason"]] if not listener["ok"] else []
    reasons += [f"background loop {name} is {loops[name]['lag_secs']}s behind" for name in late]
    return {"ok": not reasons, "listener": listener, "loops": loops,
            **({"reason": "; ".join(reasons)} if reasons else {})}


def _check_jwks() -> dict[str, Any]:
    """The JWKS key set tokens are verified with (ticker.web.jwks): degraded while a failing
    JWKS URL leaves it stale, not ok once too old to trust (every token is refused)."""
    keys = auth.key_set(current_app.config)
    return {"ok": True, "source": "public key"} if keys is None else keys.report()


def _check_candles() -> dict[str, Any]:
    """The candle builder (ticker.candles.builder): degraded when it stopped reporting or its
    completed candles wait for PostgreSQL; never fails /health (ticks flow without it)."""
    from ticker.candles.builder import builder_report

    report = builder_report(_probe(), time.time())
    if report is None:
        return {"ok": True, "builder": "none has reported"}
    reasons = [] if report["up"] else [f"the candle builder has not reported for {report['age_secs']}s"]
    if report["rows_pending"] and report["write_failures"] and report["last_error"]:
        reasons.append(f"{report['rows_pending']} completed candles wait for PostgreSQL: {report['last_error']}")
    return {"ok": True, "builder": report, **({"reasons": reasons} if reasons else {})}


CHECKS: dict[str, Callable[[], dict[str, Any]]] = {
    "delivery": _check_delivery,
    "redis": _check_redis,
    "database": _check_database,
    "shards": _check_shards,
    "registry": _check_registry,
    "jobs": check_jobs,  # never fails /health: lists failed jobs and invalid Kite tokens as reasons
    "jwks": _check_jwks,
    "candles": _check_candles,
}
NEED_REDIS = ("shards", "registry", "jobs", "candles")  # not tried when Redis does not answer: /health answers fast


# What a load balancer needs to know: can this replica serve its clients (its own tick path,
# Redis, the database, the registry)? An upstream outage is the cluster's, not this replica's:
# taking every replica out of rotation for it would only keep clients from hearing about it.
# An issuer whose keys are unreachable is the cluster's trouble too: connected clients keep
# streaming, and every replica would be out of rotation alike.
READY_CHECKS = ("delivery", "redis", "database", "registry")


def _run(names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        if name in NEED_REDIS and not results.get("redis", {}).get("ok", True):
            results[name] = {"ok": name in ("jobs", "candles"), "reason": "not checked: Redis does not answer"}
            continue
        try:
            results[name] = CHECKS[name]()
        except Exception as exc:  # noqa: BLE001  (a failing dependency is a result, not a crash)
            results[name] = {"ok": False, "reason": f"{type(exc).__name__}: {exc}"}
    return results


def _answer(results: dict[str, dict[str, Any]]):
    healthy = all(r["ok"] for r in results.values())
    degraded = any(r.get("degraded") or r.get("reasons") for r in results.values())
    status = "unavailable" if not healthy else "degraded" if degraded else "ok"
    return jsonify({"status": status, "checks": results}), 200 if healthy else 503


@bp.get("/health")
def health():
    """The whole tick path, for operators and monitoring: 503 when no tick can reach this
    replica's clients (its listener, Redis, the database, the registry, or every shard down),
    200 `degraded` with the reasons when part of the upstream is down, 200 `ok` otherwise."""
    return _answer(_run(tuple(CHECKS)))


@bp.get("/health/ready")
def ready():
    """Readiness, for load balancers: 503 only when this replica itself cannot serve."""
    return _answer(_run(READY_CHECKS))


@bp.get("/health/live")
def live():
    """Liveness: the process answers. Cheap; touches no dependency."""
    return jsonify({"status": "ok"})
