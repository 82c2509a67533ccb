"""Shard tasks: one long-running task per upstream connection slot, and beat's supervisor."""

from __future__ import annotations

import logging
import os

from celery import signals
from flask import current_app

from tasks import celery, flask_app
from ticker.bus import assignment, keys
from ticker.bus.connection import redis_client
from ticker.bus.lease import ShardLease, lease_owner
from ticker.bus.ticks import DEFAULT_MODE
from ticker.db import session_for
from ticker.feed.shard import Credentials, ShardRunner, ShardSettings, token_fingerprint
from ticker.feed.sharding import slot_api_key, slots_for
from ticker.registry import accounts

log = logging.getLogger(__name__)

TOKEN_EXPIRED = "token_expired"  # why an account's slots cannot stream, as clients hear it (docs/API.md)
SUPERVISE_EVERY_SECS = 2.0  # with the lease TTL, bounds how long a dead shard's slot stays dark
DISPATCH_GUARD_SECS = 10  # one dispatch per slot in flight: a queued task has this long to start


def shard_settings(config, slot: str) -> ShardSettings:
    return ShardSettings(
        slot=slot,
        ticker_root=config["KITE_TICKER_ROOT"],
        capacity=config["KITE_TOKENS_PER_CONNECTION"],
        grace_secs=config["UNSUBSCRIBE_GRACE_SECS"],
        watchlist=dict.fromkeys(config["WATCHLIST_TOKENS"], DEFAULT_MODE),
        api_root=config["KITE_API_ROOT"],
        record_dir=config["RECORD_DIR"],
        record_retention_days=config["RECORD_RETENTION_DAYS"],
        tick_bus_url=config.get("TICK_BUS_URL", ""),
    )


def _credentials(api_key: str) -> Credentials:
    with session_for(current_app.config["DATABASE_URL"]) as session:
        account = accounts.account_credentials(session, api_key)
    if not account.access_token:
        raise accounts.AccountError(f"account {api_key} has no access token")
    return Credentials(api_key, account.access_token)


def _token_rejected(api_key: str, reason: str) -> None:
    """Stop using the account at once: its slots cannot stream, its tokens move to other
    accounts' free room or wait for a login, and their clients hear why (`token_expired`)."""
    client = redis_client(current_app.config["REDIS_URL"])
    assignment.drop_slots_of(client, api_key, TOKEN_EXPIRED)
    with session_for(current_app.config["DATABASE_URL"]) as session:
        accounts.mark_token_invalid(session, api_key, reason, notify=client)


@celery.task(bind=True, acks_late=False, ignore_result=True)
def run_shard(self, slot: str) -> None:
    """Own `slot` and stream it until the lease is lost, the worker shuts down or Kite refuses
    the account's token (ticker.feed.shard).

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
    api_key = slot_api_key(slot)

    def should_stop() -> bool:
        return os.getppid() != parent or bool(client.exists(keys.worker_stopping(hostname)))

    try:
        runner = ShardRunner(
            shard_settings(current_app.config, slot), client, lease,
            load_credentials=lambda: _credentials(api_key),
            on_token_rejected=lambda reason: _token_rejected(api_key, reason),
            should_stop=should_stop,
        )
    except Exception:
        lease.release()
        raise
    runner.run()


def refresh_slots(config) -> dict[str, int]:
    """Publish the pool (every enabled account's slots, those usable now: a valid token, and
    why the others are not) and the usable accounts' token fingerprints; returns the usable
    slots with their capacity."""
    client = redis_client(config["REDIS_URL"])
    with session_for(config["DATABASE_URL"]) as session:
        # A local run (the simulator's credentials in config) needs no `flask accounts add`.
        accounts.ensure_config_account(session, config)
        enabled = accounts.active_accounts(session)
    usable = [a for a in enabled if a.token_valid and a.access_token]

    def slots_of(chosen: list) -> dict[str, int]:
        return dict.fromkeys(slots_for([a.api_key for a in chosen], config["KITE_CONNECTIONS_PER_KEY"]),
                             config["KITE_TOKENS_PER_CONNECTION"])

    capacity = slots_of(usable)
    down = {a.api_key: TOKEN_EXPIRED for a in enabled if a.api_key not in {u.api_key for u in usable}}
    assignment.set_pool(client, capacity, slots_of(enabled), down)
    if usable:
        client.hset(keys.ACCOUNT_TOKEN_FINGERPRINTS,
                    mapping={a.api_key: token_fingerprint(a.access_token) for a in usable})
    return capacity


def slots_to_run(usable: list[str], busy: set[str]) -> list[str]:
    """Every usable slot with work, and the first one without: a spare already connected, so
    the tokens that overflow the busy slots (the assignment fills slots first-fit, in order)
    stream within a second rather than after a cold start (dispatch, a fresh worker child,
    the connect), and still no more connections are open than the demand needs plus one."""
    spare = next((slot for slot in usable if slot not in busy), None)
    return [slot for slot in usable if slot in busy or slot == spare]


@celery.task(ignore_result=True)
def supervise_shards() -> list[str]:
    """Keep the pool right: usable slots from the accounts, the assignment current, and a shard
    task for every slot with work (and one spare, kept warm) that has no live owner."""
    config = current_app.config
    client = redis_client(config["REDIS_URL"])
    capacity = refresh_slots(config)
    assignment.rebalance(client, dict.fromkeys(config["WATCHLIST_TOKENS"], DEFAULT_MODE),
                         config["UNSUBSCRIBE_GRACE_SECS"])
    wanted = slots_to_run(list(capacity), set(client.hvals(keys.ASSIGNED_SLOT)))
    dispatched = []
    for slot in wanted:
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
    # Beat keeps every slot with work owned: a dead shard's slot is re-dispatched once its lease expires.
    sender.add_periodic_task(SUPERVISE_EVERY_SECS, supervise_shards.s(), name="supervise shards")


@signals.worker_ready.connect
def clear_stop_flag(sender, **_):
    # (Signal handlers run outside the app's context; and Celery's broker_url is kombu's spelling
    # of REDIS_URL, which the service's client factory does not read behind Sentinel.)
    # A restarted worker reuses its hostname: forget the previous run's stop flag. Then
    # supervise at once rather than waiting for beat's first interval.
    redis_client(flask_app.config["REDIS_URL"]).delete(keys.worker_stopping(sender.hostname))
    supervise_shards.delay()


@signals.worker_shutting_down.connect
def raise_stop_flag(sender, **_):
    # Shard tasks never finish by themselves; this is how a warm shutdown reaches them.
    redis_client(flask_app.config["REDIS_URL"]).set(keys.worker_stopping(sender), "1", ex=120)
