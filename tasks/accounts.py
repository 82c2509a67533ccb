"""Account tasks: validate (and renew) every Kite access token, after the daily expiry and
periodically. (The configured account of a local run is added by the shard supervisor.)"""

from __future__ import annotations

import logging

from celery import signals
from celery.schedules import crontab
from flask import current_app

from tasks import celery
from ticker.bus.connection import redis_client
from ticker.db import session_for
from ticker.jobs import TOKEN_CHECK, run_job
from ticker.registry.tokens import check_all

log = logging.getLogger(__name__)

CHECK_EVERY_SECS = 15 * 60.0  # a token Kite killed early (logout, new login elsewhere) is noticed soon
LOCK_SECS = 120  # a check takes one profile call per account


def _describe(outcomes: dict[str, str]) -> str:
    return ", ".join(f"{key}: {outcome}" for key, outcome in outcomes.items()) or "no accounts"


@celery.task(ignore_result=True, time_limit=LOCK_SECS)
def check_tokens() -> str:
    """Validate each account's token with `profile`; renew, or mark invalid and tell operators."""
    config = current_app.config
    client = redis_client(config["REDIS_URL"])

    def body() -> dict[str, str]:
        with session_for(config["DATABASE_URL"]) as session:
            return check_all(session, config)

    result = run_job(client, config["DATABASE_URL"], TOKEN_CHECK, body, LOCK_SECS, describe=_describe)
    return result if isinstance(result, str) else _describe(result)


@celery.on_after_finalize.connect
def schedule(sender, **_):
    # Kite expires every token around 06:00 IST: check (and renew) right after, every day.
    sender.add_periodic_task(crontab(hour=6, minute=5), check_tokens.s(), name="check tokens after expiry")
    # And every quarter hour, for tokens killed early (a logout, a second login).
    sender.add_periodic_task(CHECK_EVERY_SECS, check_tokens.s(), name="check tokens")


@signals.worker_ready.connect
def check_on_start(**_):
    # An operator starting the service learns each token's state now, not a quarter hour later.
    check_tokens.delay()
