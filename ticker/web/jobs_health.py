"""The /health "jobs" check: each beat job's last run, and each Kite account's token state,
both read from PostgreSQL (a Redis restart loses neither).

Always ok: a failed job or an invalid token is listed under `reasons`, but the replica stays
healthy, because it still serves ticks (yesterday's registry stays in place; shards on a dead
token show up in the "shards" check, which does fail /health)."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from flask import current_app

from ticker.db import session_for
from ticker.jobs import FAILED, KNOWN_JOBS, NEVER_RUN, job_statuses
from ticker.registry.accounts import account_summaries


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _accounts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    now = time.time()
    return [
        {
            "api_key": row["api_key"],
            "token_valid": row["token_valid"],
            "reason": row["token_invalid_reason"],
            "expires_at": _iso(row["token_expires_at"]),
            "expires_in_secs": round(row["token_expires_at"].timestamp() - now) if row["token_expires_at"] else None,
            "checked_at": _iso(row["token_checked_at"]),
        }
        for row in rows
        if row["enabled"]
    ]


def check_jobs() -> dict[str, Any]:
    """{ok: True, jobs: {name: last run}, accounts: [token state], reasons: [failures]}; every
    job of ticker.jobs.KNOWN_JOBS is listed, with the outcome `never_run` before its first run."""
    with session_for(current_app.config["DATABASE_URL"]) as session:
        jobs, accounts = job_statuses(session), _accounts(account_summaries(session))
    for name, when in KNOWN_JOBS.items():  # a job that has not run yet is listed, not missing
        jobs.setdefault(name, {"outcome": NEVER_RUN, "detail": f"no run recorded yet; runs {when}",
                               "last_run": None, "last_ok": None, "duration_secs": None})
    reasons = [f"job {name} failed: {job['detail']}" for name, job in jobs.items() if job["outcome"] == FAILED]
    reasons += [f"Kite account {a['api_key']}: token invalid ({a['reason']})" for a in accounts if not a["token_valid"]]
    return {"ok": True, "jobs": jobs, "accounts": accounts, "reasons": reasons}
