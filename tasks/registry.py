"""Registry tasks: the morning reload of the instruments dump, and a first load on a fresh install."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, time, timedelta

import requests
from celery import signals
from celery.schedules import BaseSchedule, schedstate
from flask import current_app
from kiteconnect.exceptions import KiteException

from tasks import celery, flask_app
from ticker.bus.connection import redis_client
from ticker.jobs import run_job
from ticker.registry.calendar import next_trading_run, read_holidays
from ticker.registry.loader import RELOAD_JOB, RELOAD_LOCK_SECS, registry_size, reload_instruments

log = logging.getLogger(__name__)

ENSURE_EVERY_SECS = 30.0
LOCK_SECS = RELOAD_LOCK_SECS
RELOAD_AT = time(8, 15)  # IST: Kite refreshes the dump around 08:00 on trading days
RECHECK_SECS = 3600.0  # beat re-reads the holidays file at least this often
FETCH_ERRORS = (OSError, requests.RequestException, KiteException)


class trading_days(BaseSchedule):  # noqa: N801  (named like Celery's own `crontab`, `solar`)
    """Due once a day at `at` (IST) on weekdays that are not listed in the holidays file."""

    def __init__(self, at: time, holidays_file: str, nowfun=None, app=None):
        super().__init__(nowfun=nowfun, app=app)
        self.at, self.holidays_file = at, holidays_file

    def next_run(self, last_run_at: datetime) -> datetime:
        if last_run_at.tzinfo is None:
            last_run_at = last_run_at.replace(tzinfo=UTC)
        return next_trading_run(last_run_at, self.at, read_holidays(self.holidays_file))

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        return self.next_run(last_run_at) - self.now()

    def is_due(self, last_run_at: datetime) -> schedstate:
        now = self.now()
        if self.next_run(last_run_at) <= now:
            return schedstate(True, min((self.next_run(now) - now).total_seconds(), RECHECK_SECS))
        return schedstate(False, min((self.next_run(last_run_at) - now).total_seconds(), RECHECK_SECS))

    def __reduce__(self):
        return self.__class__, (self.at, self.holidays_file)

    def __eq__(self, other):
        return isinstance(other, trading_days) and (self.at, self.holidays_file) == (other.at, other.holidays_file)

    def __repr__(self) -> str:
        return f"<trading_days {self.at:%H:%M} IST, holidays from {self.holidays_file}>"


@celery.task(ignore_result=True, time_limit=LOCK_SECS, autoretry_for=FETCH_ERRORS, retry_backoff=30,
             retry_backoff_max=600, max_retries=8)
def reload_registry() -> str:
    """Reload the registry from the dump; an unusable dump leaves yesterday's in place."""
    config = current_app.config
    result = run_job(redis_client(config["REDIS_URL"]), config["DATABASE_URL"], RELOAD_JOB,
                     lambda: reload_instruments(current_app), LOCK_SECS, describe=lambda report: report.summary())
    return result if isinstance(result, str) else result.summary()


@celery.task(
    ignore_result=True,
    autoretry_for=FETCH_ERRORS,
    retry_backoff=2,
    retry_backoff_max=60,
    max_retries=None,  # Kite (or the simulator) not up yet: keep trying, the registry is essential
)
def ensure_registry() -> int:
    """Load the registry if it is empty (a fresh install); returns instruments loaded."""
    if registry_size(current_app) > 0:
        return 0
    config = current_app.config
    result = run_job(redis_client(config["REDIS_URL"]), config["DATABASE_URL"], RELOAD_JOB,
                     lambda: reload_instruments(current_app), LOCK_SECS, describe=lambda report: report.summary())
    return 0 if isinstance(result, str) else result.rows


@celery.on_after_finalize.connect
def schedule(sender, **_):
    # A fresh install (or an emptied database) gets its registry without an operator.
    sender.add_periodic_task(ENSURE_EVERY_SECS, ensure_registry.s(), name="ensure registry")
    # Every trading morning, after Kite refreshes the dump: tokens and symbols change overnight.
    holidays_file = flask_app.config["HOLIDAYS_FILE"]
    sender.add_periodic_task(trading_days(RELOAD_AT, holidays_file), reload_registry.s(), name="reload registry")


@signals.worker_ready.connect
def ensure_on_start(**_):
    # Do not make a fresh install wait for the first beat interval.
    ensure_registry.delay()
