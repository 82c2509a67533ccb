"""Shard tasks: one long-running task per upstream connection slot, and beat's supervisor."""

from __future__ import annotations

import logging
import os

from celery import signals
from flask import current_app

from tasks import celery
from ticker.bus import keys
from ticker.bus.connection import redis_client
from ticker.bus.lease import ShardLease, lease_owner
from ticker.bus.ticks import DEFAULT_MODE
from ticker.feed.shard import ShardRunner, ShardSettings

log = logging.getLogger(__name__)

SUPERVISE_EVERY_SECS = 5.0
DISPATCH_GUARD_SECS = 15  # one dispatch per slot in flight: a queued task has this long to start


def configured_slots(config) -> list[str]:
    """Connection slots this deployment streams: "<api key>:<slot number>"."""
    count = min(config["SHARD_SLOTS"], config["KITE_CONNECTIONS_PER_KEY"])
    return [f"{config['KITE_API_KEY']}:{n}" for n in range(count)]


def shard_settings(config, slot: str) -> ShardSettings:
    return ShardSettings(
        slot=slot,
        ticker_root=config["KITE_TICKER_ROOT"],
        api_key=config["KITE_API_KEY"],
        access_token=config["KITE_ACCESS_TOKEN"],
        capacity=config["KITE_TOKENS_PER_CONNECTION"],
        grace_secs=config["UNSUBSCRIBE_GRACE_SECS"],
        watchlist=dict.fromkeys(config["WATCHLIST_TOKENS"], DEFAULT_MODE),
    )


@celery.task(bind=True, acks_late=False, ignore_result=True)
def run_shard(self, slot: str) -> None:
    """Own `slot` and stream it until the lease is lost or the worker shuts down.

    Acknowledged on receipt: if the worker dies, the lease expires and the supervisor
    dispatches the slot again, so a redelivered copy would only be a duplicate.
    """
    client = redis_client(current_app.config["REDIS_URL"])
    hostname, parent = self.request.hostname, os.getppid()
    lease = ShardLease(client, slot, owner=f"{hostname}:{os.getpid()}")
    if not lease.acquire():
        log.info("slot %s already owned by %s", slot, lease_owner(client, slot))
        return
    log.info("shard %s leased (generation %s)", slot, lease.generation)

    def should_stop() -> bool:
        return os.getppid() != parent or bool(client.exists(keys.worker_stopping(hostname)))

    ShardRunner(shard_settings(current_app.config, slot), client, lease, should_stop).run()


@celery.task(ignore_result=True)
def supervise_shards() -> list[str]:
    """Dispatch a shard task for every slot with no live owner; returns the slots dispatched."""
    client = redis_client(current_app.config["REDIS_URL"])
    dispatched = []
    for slot in configured_slots(current_app.config):
        if lease_owner(client, slot) is None and client.set(
            keys.shard_dispatched(slot), "1", nx=True, ex=DISPATCH_GUARD_SECS
        ):
            run_shard.delay(slot)
            dispatched.append(slot)
    if dispatched:
        log.info("dispatched shards for %s", dispatched)
    return dispatched


@celery.on_after_finalize.connect
def schedule(sender, **_):
    # Beat re-dispatches any slot whose owner died (its lease expired).
    sender.add_periodic_task(SUPERVISE_EVERY_SECS, supervise_shards.s(), name="supervise shards")


@signals.worker_ready.connect
def clear_stop_flag(sender, **_):
    # A restarted worker reuses its hostname: forget the previous run's stop flag. Then
    # supervise at once rather than waiting for beat's first interval.
    redis_client(celery.conf.broker_url).delete(keys.worker_stopping(sender.hostname))
    supervise_shards.delay()


@signals.worker_shutting_down.connect
def raise_stop_flag(sender, **_):
    # Shard tasks never finish by themselves; this is how a warm shutdown reaches them.
    redis_client(celery.conf.broker_url).set(keys.worker_stopping(sender), "1", ex=120)
