"""Registry tasks: load the instruments dump when the registry is empty."""

from __future__ import annotations

import logging

import requests
from celery import signals
from kiteconnect.exceptions import KiteException
from flask import current_app

from tasks import celery
from ticker.bus import keys
from ticker.bus.connection import redis_client
from ticker.registry.loader import load_instruments, registry_size

log = logging.getLogger(__name__)

ENSURE_EVERY_SECS = 30.0
LOCK_SECS = 300  # longer than any load takes; a crashed loader's lock expires by itself


@celery.task(
    ignore_result=True,
    autoretry_for=(OSError, requests.RequestException, KiteException),
    retry_backoff=2,
    retry_backoff_max=60,
    max_retries=None,  # Kite (or the simulator) not up yet: keep trying, the registry is essential
)
def ensure_registry() -> int:
    """Load the registry if it is empty (a fresh install); returns instruments loaded."""
    if registry_size(current_app) > 0:
        return 0
    client = redis_client(current_app.config["REDIS_URL"])
    if not client.set(keys.REGISTRY_LOADING, "1", nx=True, ex=LOCK_SECS):
        return 0
    try:
        return load_instruments(current_app)
    finally:
        client.delete(keys.REGISTRY_LOADING)


@celery.on_after_finalize.connect
def schedule(sender, **_):
    # A fresh install (or an emptied database) gets its registry without an operator.
    sender.add_periodic_task(ENSURE_EVERY_SECS, ensure_registry.s(), name="ensure registry")


@signals.worker_ready.connect
def ensure_on_start(**_):
    # Do not make a fresh install wait for the first beat interval.
    ensure_registry.delay()
