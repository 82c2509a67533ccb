"""The shard runtime: one upstream Kite connection, kept streaming what its slot is assigned.

A shard holds the lease on one (API key, connection slot), opens the ticker connection,
subscribes incrementally as the slot's assignment changes, parses every frame and hands the
ticks to the fenced publisher. It reconnects with backoff when the feed drops or goes silent,
reconnects with the new token when the account's token changes, and stops for good when it
loses its lease, its worker shuts down, or Kite rejects the account's token.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
import websocket

from ticker.bus import assignment, keys
from ticker.bus.lease import RENEW_EVERY_SECS, ShardLease
from ticker.bus.publisher import LeaseLost, TickPublisher
from ticker.bus.ticks import encode
from ticker.feed import subscriptions
from ticker.feed.connection import KiteConnection, TokenRejected, is_binary
from ticker.feed.protocol import ProtocolError, parse_frame, parse_text

log = logging.getLogger(__name__)

SILENCE_SECS = 5.0  # Kite sends a heartbeat every second; five missed means the feed is dead
ASSIGNMENT_POLL_SECS = 0.25  # a first subscriber gets data within about a second
STATE_EVERY_SECS = 1.0  # how often the shard reports itself (and checks it should stop)
BACKOFF_FIRST_SECS = 0.5
BACKOFF_MAX_SECS = 30.0


class ShardStopped(Exception):
    """The shard must stop for good: lease lost, worker shutting down, or token rejected."""


class FeedSilent(Exception):
    """Nothing, not even a heartbeat, arrived for SILENCE_SECS."""


class TokenChanged(Exception):
    """The account's access token changed: reconnect with the new one."""


@dataclass
class ShardSettings:
    """What one shard needs to know, taken from the app's Config."""

    slot: str
    ticker_root: str
    capacity: int
    grace_secs: float
    watchlist: dict[int, str] = field(default_factory=dict)


@dataclass
class Credentials:
    api_key: str
    access_token: str

    @property
    def fingerprint(self) -> str:
        return token_fingerprint(self.access_token)


def token_fingerprint(access_token: str) -> str:
    """Tells tokens apart without storing them: shards compare this to notice a new token."""
    return hashlib.sha256(access_token.encode()).hexdigest()[:16]


class Backoff:
    """Exponential backoff with full jitter, so shards that fell together do not retry together."""

    def __init__(self) -> None:
        self.attempts = 0

    def next_delay(self) -> float:
        ceiling = min(BACKOFF_MAX_SECS, BACKOFF_FIRST_SECS * 2**self.attempts)
        self.attempts += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempts = 0


class ShardRunner:
    """Streams one slot until told to stop.

    `load_credentials()` returns the slot's account credentials (re-read when the token
    changes); `on_token_rejected(reason)` records Kite's refusal; `should_stop` is polled
    about once a second.
    """

    def __init__(
        self,
        settings: ShardSettings,
        client: redis.Redis,
        lease: ShardLease,
        load_credentials: Callable[[], Credentials],
        on_token_rejected: Callable[[str], None],
        should_stop: Callable[[], bool],
    ):
        self.settings = settings
        self.redis = client
        self.lease = lease
        self.load_credentials = load_credentials
        self.on_token_rejected = on_token_rejected
        self.should_stop = should_stop
        self.publisher = TickPublisher(client, keys.shard_lease(settings.slot), lease.value or "")
        self.backoff = Backoff()
        self.credentials = load_credentials()
        self.current: dict[int, str] = {}  # what the open connection streams: token -> mode
        self.stats = {"ticks": 0, "frames": 0, "reconnects": 0, "gap_secs": 0.0}
        self.last_error: str | None = None

    def run(self) -> None:
        """Stream until stopped; reconnect on any feed failure."""
        try:
            while True:
                self._stream_once()
        except (ShardStopped, LeaseLost) as exc:
            log.info("shard %s stopping: %s", self.settings.slot, exc)
        finally:
            self._release()

    def _release(self) -> None:
        try:
            self.lease.release()
            self.redis.delete(keys.shard_state(self.settings.slot))
        except redis.RedisError as exc:  # the lease expires by itself
            log.warning("shard %s could not release its lease: %s", self.settings.slot, exc)

    def _stream_once(self) -> None:
        connection = KiteConnection(self.settings.ticker_root, self.credentials.api_key, self.credentials.access_token)
        down_since = time.monotonic()
        try:
            connection.open()
            log.info("shard %s connected to %s", self.settings.slot, self.settings.ticker_root)
            self.stats["gap_secs"] += time.monotonic() - down_since
            self._stream(connection)
        except TokenRejected as exc:
            self.last_error = str(exc)
            if not self._switch_token():  # refused with the token that is still current
                self.on_token_rejected(str(exc))
                raise ShardStopped(f"token rejected: {exc}") from exc
        except TokenChanged:
            self._switch_token()
        except (OSError, websocket.WebSocketException, ProtocolError, FeedSilent, redis.RedisError) as exc:
            self._fail(f"{type(exc).__name__}: {exc}", self.backoff.next_delay())
        finally:
            connection.close()
            self.current.clear()

    def _switch_token(self) -> bool:
        """Re-read the account; True (and reconnect with it) if a different token is stored now.

        A shard may connect with a token it read just before a login stored a new one: Kite's
        refusal of the old token says nothing about the new one."""
        fresh = self.load_credentials()
        if fresh.fingerprint == self.credentials.fingerprint:
            return False
        log.info("shard %s reconnecting with the account's new token", self.settings.slot)
        self.credentials = fresh
        self.stats["reconnects"] += 1
        return True

    def _fail(self, reason: str, delay: float) -> None:
        self.last_error = reason
        self.stats["reconnects"] += 1
        log.warning("shard %s feed down (%s); retrying in %.1fs", self.settings.slot, reason, delay)
        self._wait(delay)

    def _wait(self, seconds: float) -> None:
        """Sleep between attempts while still renewing the lease and honouring a stop."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                self._check_alive()
                self._report("reconnecting")
            except redis.RedisError as exc:  # Redis restarting: wait for it, the lease decides
                log.warning("shard %s: Redis unavailable: %s", self.settings.slot, exc)
            except TokenChanged:
                self._switch_token()
                return
            time.sleep(min(RENEW_EVERY_SECS / 2, max(0.0, deadline - time.monotonic())))

    def _stream(self, connection: KiteConnection) -> None:
        last_data = last_poll = last_state = time.monotonic()
        version = None
        while True:
            frame = connection.read()
            now = time.monotonic()
            if frame is not None:
                last_data = now
                self._on_frame(*frame)
            if now - last_data > SILENCE_SECS:
                raise FeedSilent(f"no data or heartbeat for {SILENCE_SECS:.0f}s")
            if now - last_poll >= ASSIGNMENT_POLL_SECS:
                last_poll = now
                version = self._follow_assignment(connection, version)
            if now - last_state >= STATE_EVERY_SECS:
                last_state = now
                self._check_alive()
                self._report("streaming")
                self.backoff.reset()

    def _on_frame(self, opcode: int, data: bytes) -> None:
        if not is_binary(opcode):
            self._on_text(data)
            return
        self.stats["frames"] += 1
        self.stats["ticks"] += self.publisher.publish(parse_frame(data))

    def _on_text(self, data: bytes) -> None:
        message = parse_text(data)
        if message is None:
            return
        if message.get("type") == "error":
            self.last_error = str(message.get("data"))
            log.error("shard %s: Kite says: %s", self.settings.slot, self.last_error)
        elif message.get("type") == "order":
            self.redis.publish(keys.orders_of(self.credentials.api_key), encode(message["data"]))

    def _follow_assignment(self, connection: KiteConnection, version: int | None) -> int:
        """Help keep the assignment current, then stream exactly this slot's share of it."""
        assignment.rebalance(self.redis, self.settings.watchlist, self.settings.grace_secs)
        now_version = assignment.assignment_version(self.redis)
        if now_version == version:
            return now_version
        wanted = assignment.tokens_of(self.redis, self.settings.slot)
        changes = subscriptions.plan(self.current, wanted, self.settings.capacity)
        if changes:
            self._send(connection, changes)
        if changes.over_capacity:
            log.error("shard %s: assigned more than its capacity: %s", self.settings.slot, changes.over_capacity)
        return now_version

    def _send(self, connection: KiteConnection, changes: subscriptions.Changes) -> None:
        # Kite applies messages in order: unsubscribe first so the connection never holds more
        # than its limit, even for a moment.
        if changes.unsubscribe:
            connection.send("unsubscribe", changes.unsubscribe)
        new_tokens = [t for tokens in changes.subscribe.values() for t in tokens]
        self.publisher.resume_seqs(new_tokens)
        for mode, tokens in changes.subscribe.items():
            connection.send("subscribe", tokens)
            connection.send("mode", [mode, tokens])
        for mode, tokens in changes.set_mode.items():
            connection.send("mode", [mode, tokens])
        subscriptions.apply(self.current, changes)
        log.info(
            "shard %s now streams %d tokens (+%d, -%d)", self.settings.slot,
            len(self.current), len(new_tokens), len(changes.unsubscribe),
        )

    def _check_alive(self) -> None:
        if not self.lease.renew():
            raise ShardStopped("lease lost to another owner")
        if self.should_stop():
            raise ShardStopped("worker shutting down")
        stored = self.redis.hget(keys.ACCOUNT_TOKEN_FINGERPRINTS, self.credentials.api_key)
        if stored and stored != self.credentials.fingerprint:
            raise TokenChanged()

    def _report(self, state: str) -> None:
        self.redis.hset(
            keys.shard_state(self.settings.slot),
            mapping={
                "state": state,
                "owner": self.lease.owner,
                "generation": self.lease.generation or 0,
                "pid": os.getpid(),
                "tokens": len(self.current),
                "heartbeat": time.time(),
                "last_error": self.last_error or "",
                **{k: round(v, 3) if isinstance(v, float) else v for k, v in self.stats.items()},
            },
        )
        self.redis.expire(keys.shard_state(self.settings.slot), 30)
