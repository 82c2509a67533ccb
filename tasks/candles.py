"""Candle tasks: keep the `candles` table's day partitions ahead of the clock and drop those
past `CANDLE_RETENTION_DAYS` (ticker.candles.store)."""

from __future__ import annotations

from datetime import datetime

from celery import signals
from flask import current_app

from tasks import celery
from ticker.bus.connection import redis_client
from ticker.candles import store
from ticker.clock import IST
from ticker.db import engine_for
from ticker.jobs import CANDLE_PARTITIONS, run_job

EVERY_SECS = 3600.0  # partitions exist days ahead: an hourly run survives a beat down for days
LOCK_SECS = 120


@celery.task(ignore_result=True, time_limit=LOCK_SECS)
def maintain_candle_partitions() -> str:
    """Create the coming days' partitions and drop the expired ones."""
    config = current_app.config

    def body() -> str:
        return store.maintain_partitions(engine_for(config["DATABASE_URL"]), datetime.now(IST).date(),
                                         config["CANDLE_RETENTION_DAYS"])

    return str(run_job(redis_client(config["REDIS_URL"]), config["DATABASE_URL"], CANDLE_PARTITIONS, body, LOCK_SECS))


@celery.on_after_finalize.connect
def schedule(sender, **_):
    # Partitions for today and the next days, and retention: hourly, cheap when nothing is due.
    sender.add_periodic_task(EVERY_SECS, maintain_candle_partitions.s(), name="maintain candle partitions")


@signals.worker_ready.connect
def maintain_on_start(**_):
    maintain_candle_partitions.delay()
