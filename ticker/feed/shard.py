"""The shard runtime: one upstream Kite connection, kept streaming what its slot is assigned.

A shard holds the lease on one (API key, connection slot), opens the ticker connection,
subscribes incrementally as the slot's assignment changes, parses every frame and hands the
ticks to the fenced publisher. It reconnects with backoff when the feed drops or goes silent,
reconnects with the new token when the account's token changes, and stops for good when it
loses its lease, its worker shuts down, or Kite refuses the account's token.

No upstream connection without a live lease, even for a moment (Kite allows three per API
key, and a slot's lease is what keeps a key's connections to its slots):
- a connect starts only right after a successful renewal, with at least
  MIN_LEASE_TO_CONNECT_SECS of the lease's local validity left, and every step of it (TCP,
  TLS, handshake) must finish within what is left;
- once connected, the lease is renewed before anything else; lost, the connection is closed;
- the lease watchdog (ticker.feed.watchdog) shuts the socket down the moment the lease's local
  validity runs out without a renewal, whatever the loop is blocked on;
- a lease acquired after Redis lost the slot's history is held, without connecting, until one
  lease TTL after the loss (`ShardLease.connect_after`): a previous holder may still hold a
  connection it believes leased, and its own validity ends within one TTL. The cost is at most
  one TTL (6 s) before the first ticks after a fresh start or a Redis that lost its data.

Nothing Kite sends can stop a shard or make it reconnect: every frame goes through
ticker.feed.frames, which publishes what is sound and counts and logs the rest. Kite's refusal
of the token is recognised in every form it takes (ticker.feed.rejection): a 403 at the
upgrade, an error frame naming TokenException, or an ambiguous close or error confirmed with
Kite's REST API; each takes the path of a 403 (`on_token_rejected`, then stop).

The shard's state hash (`keys.shard_state`, refreshed every second) says what it does
(`state`: streaming, reconnecting, or waiting out a lost lease history), the error that stands
now (`error`, cleared once the feed streams again), the last error ever and its time
(`last_error`, `last_error_at`, kept for history) and its counters (exported by
ticker.metrics).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import redis
import websocket

from ticker.bus import assignment, keys
from ticker.bus.lease import RENEW_EVERY_SECS, ShardLease
from ticker.bus.publisher import LeaseLost
from ticker.bus.sharded import tick_publisher
from ticker.feed import rejection, subscriptions
from ticker.feed.connection import (
    CONNECT_TIMEOUT_SECS,
    KiteConnection,
    TokenRejected,
    UnreadableFrame,
    UpstreamClosed,
)
from ticker.feed.frames import PROTOCOL, FrameHandler, frame_limit
from ticker.feed.recorder import FrameRecorder
from ticker.feed.rejection import Signal
from ticker.feed.watchdog import LeaseWatchdog

log = logging.getLogger(__name__)

SILENCE_SECS = 5.0  # Kite sends a heartbeat every second; five missed means the feed is dead
ASSIGNMENT_POLL_SECS = 0.25  # a first subscriber gets data within about a second
STATE_EVERY_SECS = 1.0  # how often the shard reports itself (and checks it should stop)
STATE_TTL_SECS = 30  # a shard that stopped reporting leaves no state behind for long
BACKOFF_FIRST_SECS = 0.5
# Every second a shard waits after the feed is back is a second of ticks lost to its clients: a
# few attempts a minute per connection is no load for Kite, and a refused token stops the
# retries altogether (it is not retried with backoff but waits for a new token).
BACKOFF_MAX_SECS = 5.0
MIN_LEASE_TO_CONNECT_SECS = 2.0  # a handshake with Kite takes well under a second
# A connect ends this long before the lease's local validity: a failed one still leaves time to
# renew the lease before Redis drops it, and the watchdog never has to step in for a connect.
CONNECT_SLACK_SECS = 1.0


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
    api_root: str = ""  # Kite's REST root, to confirm an ambiguous refusal of the token
    record_dir: str = ""  # where to record every frame received (ticker.feed.recorder); empty: off
    record_retention_days: int = 7
    tick_bus_url: str = ""  # Config.TICK_BUS_URL: empty, ticks go to the shard's own Redis


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


class Ended(NamedTuple):
    """How a connection ended: why, and what that says about the access token."""

    reason: str
    token: Signal


class ShardRunner:
    """Streams one slot until told to stop.

    `load_credentials()` returns the slot's account credentials (re-read when the token
    changes); `on_token_rejected(reason)` records Kite's refusal; `should_stop` is polled
    about once a second. `on_frame` is what the shard does with every frame Kite sends.
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
        self.publisher = tick_publisher(client, lease, settings.tick_bus_url)
        self.backoff = Backoff()
        self.credentials = load_credentials()
        self.frames = FrameHandler(settings.slot, self.credentials.api_key, client, self.publisher,
                                   frame_limit(settings.capacity))
        self.watchdog = LeaseWatchdog(lease)
        self.recorder = (FrameRecorder(settings.record_dir, settings.slot, settings.record_retention_days)
                         if settings.record_dir else None)
        self.current: dict[int, str] = {}  # what the open connection streams: token -> mode
        self.stats = {"reconnects": 0, "gap_secs": 0.0}
        self.down_since = time.monotonic()
        self.suspect = Signal.NONE  # what the open connection said about the token so far
        self.error: str | None = None  # the error that stands now
        self.last_error: str | None = None
        self.last_error_at: float | None = None  # epoch seconds

    def run(self) -> None:
        """Stream until stopped; reconnect on any feed failure."""
        self.watchdog.start()
        try:
            self._wait_out_lost_history()
            while True:
                self._stream_once()
        except (ShardStopped, LeaseLost) as exc:
            log.info("shard %s stopping: %s", self.settings.slot, exc)
        finally:
            self.watchdog.stop()
            if self.recorder:
                self.recorder.close()
            self._release()

    def _release(self) -> None:
        state = keys.shard_state(self.settings.slot)
        try:
            self.lease.release()
            if self.redis.hget(state, "owner") == self.lease.owner:  # not a new owner's report
                self.redis.delete(state)
        except redis.RedisError as exc:  # the lease expires by itself
            log.warning("shard %s could not release its lease: %s", self.settings.slot, exc)

    def _wait_out_lost_history(self) -> None:
        """Hold a lease whose history Redis lost until a previous holder's is surely over."""
        until = self.lease.connect_after
        if time.monotonic() >= until:
            return
        log.info("shard %s: Redis lost the lease history; waiting %.1fs before connecting",
                 self.settings.slot, until - time.monotonic())
        while time.monotonic() < until:
            self._wait(until - time.monotonic(), "waiting")

    def _stream_once(self) -> None:
        try:
            ended = self._connect_and_stream()
        except TokenChanged:
            self._switch_token()
            return
        if ended.token is Signal.DEFINITE or (ended.token is Signal.SUSPECT and self._token_refused()):
            self._token_rejected(ended.reason)
        else:
            self._fail(ended.reason, self.backoff.next_delay())

    def _connect_and_stream(self) -> Ended:
        """One connection, from connect to its end (closed on return). Raises ShardStopped,
        LeaseLost and TokenChanged; returns how the connection ended for everything else."""
        creds = self.credentials
        connection = KiteConnection(self.settings.ticker_root, creds.api_key, creds.access_token, self.settings.slot)
        self.suspect = Signal.NONE
        try:
            deadline = self._connect_deadline()
            self.watchdog.guard(connection)
            connection.open(deadline)
            self._check_lease()  # the connect may have outlived the lease: nothing else first
            log.info("shard %s connected to %s", self.settings.slot, self.settings.ticker_root)
            self.stats["gap_secs"] += time.monotonic() - self.down_since
            self._stream(connection)
        except TokenRejected as exc:
            return Ended(str(exc), Signal.DEFINITE)
        except UpstreamClosed as exc:
            return Ended(self._with_kite_error(str(exc)), max(rejection.from_close(exc.code, exc.reason), self.suspect))
        except (OSError, websocket.WebSocketException, FeedSilent, redis.RedisError) as exc:
            return Ended(self._with_kite_error(f"{type(exc).__name__}: {exc}"), self.suspect)
        finally:
            self.watchdog.guard(None)
            connection.close()
            self.current.clear()
        raise AssertionError("_stream returns only by raising")  # pragma: no cover

    def _connect_deadline(self) -> float:
        """Renew the lease, then the monotonic time a connect must finish by: within what is
        left of the lease, at most CONNECT_TIMEOUT_SECS. TimeoutError if too little is left."""
        self._check_lease()
        left = self.lease.remaining()
        if left < MIN_LEASE_TO_CONNECT_SECS:
            raise TimeoutError(f"only {left:.1f}s of lease left after renewing it: too little to connect")
        return time.monotonic() + min(CONNECT_TIMEOUT_SECS, left - CONNECT_SLACK_SECS)

    def _check_lease(self) -> None:
        if not self.lease.renew():
            raise ShardStopped("lease lost to another owner")

    def _with_kite_error(self, reason: str) -> str:
        return f"{reason}; after {self.frames.kite_error}" if self.suspect else reason

    def _token_refused(self) -> bool:
        """Kite's REST API says whether it refuses the token (an ambiguous signal's check)."""
        creds = self.credentials
        refused = rejection.token_refused(self.settings.api_root, creds.api_key, creds.access_token)
        log.info("shard %s: Kite's profile call says the token is %s", self.settings.slot,
                 {True: "refused", False: "good", None: "unknown (no answer)"}[refused])
        return bool(refused)

    def _token_rejected(self, reason: str) -> None:
        self._note_error(reason)
        if self._switch_token():  # refused, but a login stored a new token meanwhile
            return
        self.on_token_rejected(reason)
        raise ShardStopped(f"token rejected: {reason}")

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

    def _note_error(self, reason: str) -> None:
        self.error = self.last_error = reason
        self.last_error_at = time.time()

    def _fail(self, reason: str, delay: float) -> None:
        self._note_error(reason)
        self.stats["reconnects"] += 1
        log.warning("shard %s feed down (%s); retrying in %.1fs", self.settings.slot, reason, delay)
        self._wait(delay)

    def _wait(self, seconds: float, state: str = "reconnecting") -> None:
        """Sleep between attempts while still renewing the lease and honouring a stop."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                self._check_alive()
                self._report(state)
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
            frame = self._read(connection)
            now = time.monotonic()
            if frame is not None:
                last_data = now
                if self.recorder:  # first: a frame that ends the connection is recorded too
                    self.recorder.record(*frame)
                self.on_frame(*frame)
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

    def _read(self, connection: KiteConnection) -> tuple[int, bytes] | None:
        try:
            return connection.read()
        except UnreadableFrame as exc:  # read whole and skipped: the stream goes on
            self.frames.note(PROTOCOL, str(exc))
            return None

    def on_frame(self, opcode: int, data: bytes) -> None:
        """Handle one frame from Kite (ticker.feed.frames). Raises TokenRejected when the frame
        names the token's refusal; remembers a frame that only may be about it."""
        token = self.frames.handle(opcode, data)
        if token is None:  # not an error frame
            return
        self.last_error, self.last_error_at = self.frames.kite_error, time.time()
        if token is Signal.DEFINITE:
            raise TokenRejected(self.frames.kite_error)
        self.suspect = max(self.suspect, token)

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
        # A change of modes only (no token came or went) is routine: DEBUG.
        log.log(
            logging.INFO if new_tokens or changes.unsubscribe else logging.DEBUG,
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
        """Refresh the state hash. Streaming again clears the error that stood."""
        if state == "streaming":
            self.error = None
            self.down_since = time.monotonic()
        counters = {**self.stats, "ticks": self.frames.ticks, "frames": self.frames.frames,
                    "ticks_unpublished": self.publisher.unpublished,
                    "watchdog_closes": self.watchdog.closes,
                    **{f"malformed_{kind}": n for kind, n in self.frames.malformed.items()}}
        if self.recorder:
            self.recorder.flush()  # a reader sees what came up to a second ago
            counters.update(self.recorder.report())
        self.redis.hset(
            keys.shard_state(self.settings.slot),
            mapping={
                "state": state,
                "owner": self.lease.owner,
                "generation": self.lease.generation or 0,
                "pid": os.getpid(),
                "tokens": len(self.current),
                "heartbeat": time.time(),
                "error": self.error or "",
                "last_error": self.last_error or "",
                "last_error_at": self.last_error_at or "",
                **{k: round(v, 3) if isinstance(v, float) else v for k, v in counters.items()},
            },
        )
        self.redis.expire(keys.shard_state(self.settings.slot), STATE_TTL_SECS)
