"""This web process's state: its clients and their subscriptions, its demand, its tick
listener and local delivery, its limits, and the background work that keeps them honest
(JWT expiry, stats for `/ws/stats`, the demand and connection-count heartbeat, subscriptions
the upstream pool found no room for)."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import redis
import sqlalchemy.exc
from flask import Flask

from ticker import metrics
from ticker.bus import assignment, keys
from ticker.bus.connection import PoolExhausted, redis_client, tick_bus_client
from ticker.bus.demand import ReplicaDemand, read_demand
from ticker.bus.sharded import read_snapshots
from ticker.bus.ticks import decode, project
from ticker.bus.upstream import BUS_UNAVAILABLE, token_states
from ticker.candles import store as candle_store
from ticker.candles.builder import builder_report
from ticker.db import engine_for, session_for
from ticker.extensions import socketio
from ticker.registry.instruments import Registry
from ticker.web import auth, errors
from ticker.web.admission import AdmissionGate
from ticker.web.entitlements import EVERYTHING, Entitlements, entitlements_from, metric_label, rejection
from ticker.web.errors import ClientError
from ticker.web.fanout import Fanout
from ticker.web.jwks import KeySetRefresh
from ticker.web.limits import AttemptWindow, TokenBucket, UserConnections, users_connected
from ticker.web.listener import TickListener
from ticker.web.live_candles import BUILDER_DOWN, NO_BUILDER, LiveCandles, candle_json
from ticker.web.loops import Loop
from ticker.web.quotes import QuoteCache, QuoteRelease
from ticker.web.rooms import room_for
from ticker.web.sharded_listener import ShardedTickListener
from ticker.web.upstream import UpstreamNotices

log = logging.getLogger(__name__)

HEARTBEAT_SECS = 5.0
SWEEP_SECS = 0.5  # how often expired JWTs are looked for
STATS_TTL_SECS = int(3 * HEARTBEAT_SECS)  # a dead replica drops out of /ws/stats after this
LIVE_WAIT_SECS = 5.0  # longest a subscribe waits for its channels before reading snapshots
UPSTREAM_CHECK_SECS = 1.0  # how often the upstream's state is read (its notices wait DOWN_NOTICE_SECS)


@dataclass(eq=False)
class Client:
    """One Socket.IO connection: who it is and what it streams (token -> mode)."""

    sid: str
    user: str
    claims: dict
    messages: TokenBucket
    sock: socket.socket | None = None
    subscriptions: dict[int, str] = field(default_factory=dict)
    by_symbol: dict[int, str] = field(default_factory=dict)  # token -> the name it was asked by
    expired_at: float | None = None  # when it was told its JWT expired
    entitlements: Entitlements = EVERYTHING  # the exchanges its JWT lets it receive
    connected_at: float = field(default_factory=time.time)

    @property
    def expires_at(self) -> float:
        """Epoch seconds of the JWT's `exp`; inf without one, or with one beyond any float
        (PyJWT accepts any integer, and the expiry sweep must not fail on it)."""
        try:
            return float(self.claims.get("exp") or float("inf"))
        except OverflowError:
            return float("inf")


class Replica:
    def __init__(self, app: Flask):
        config = app.config
        self.app = app
        self.config = config
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.redis = redis_client(config["REDIS_URL"])  # on behalf of clients: bounded, waited for
        self.background = redis_client(config["REDIS_URL"], "background")  # the replica's own loops
        self.demand = ReplicaDemand(self.redis, self.id)
        self.registry = Registry(self.redis, lambda: session_for(config["DATABASE_URL"]),
                                 socketio.start_background_task)
        self.clients: dict[str, Client] = {}
        self.per_user: Counter[str] = Counter()  # this replica's share of UserConnections
        self.user_connections = UserConnections(self.redis, self.id)
        self.user_connections_drifted = False  # a Redis error left the cluster-wide count behind
        self.joined_at: dict[int, int] = {}  # token -> demand version of its latest local subscribe
        self.attempts = AttemptWindow(config["MAX_CONNECTS_PER_ADDRESS_PER_SEC"])
        # Each user's requests to the Kite-shaped HTTP endpoints this second (0: no limit).
        self.rest_requests = AttemptWindow(config["MAX_REST_REQUESTS_PER_USER_PER_SEC"] or float("inf"))
        self.gate = AdmissionGate(config["MAX_CONCURRENT_REQUESTS"], config["REQUEST_QUEUE_WAIT_SECS"])
        self.rejected: Counter[str] = Counter()
        self.disconnected: Counter[str] = Counter()  # connections this replica cut, by code
        self.fanout = Fanout(socketio.server, self._on_slow, config["SLOW_CLIENT_SECS"])
        self.candles = LiveCandles(self.send, self._is_behind)
        listener_args = (keys.listener_wake(self.id), self.needed_buckets, self.fanout.dispatch, self._flush,
                         self.on_notice)
        listener_options = {"sleep": socketio.sleep, "create_event": socketio.server.eio.create_event}
        # Where ticks travel (Config.TICK_BUS_URL): this Redis, or a cluster by sharded pub/sub.
        # Live candles travel on this Redis only (the builder reads the single-Redis bus).
        self.tick_bus = tick_bus_client(config["TICK_BUS_URL"]) if config.get("TICK_BUS_URL") else None
        if self.tick_bus is None:
            self.listener = TickListener(self.redis, *listener_args, **listener_options,
                                         needed_candle_buckets=self.candles.needed_buckets,
                                         deliver_candles=self.candles.dispatch)
        else:
            self.listener = ShardedTickListener(self.redis, self.tick_bus, *listener_args, **listener_options)
        self.upstream = UpstreamNotices()
        self.quotes = QuoteCache(self.redis, self.demand, config["QUOTE_HOLD_SECS"], sleep=socketio.sleep,
                                 tick_bus=self.tick_bus)
        self.loops: list[Loop] = [Heartbeat(self), ExpirySweep(self), UpstreamWatch(self),
                                  QuoteRelease(self.quotes, socketio.sleep)]
        if (key_set := auth.key_set(config)) is not None:
            self.loops.append(KeySetRefresh(key_set, socketio.sleep))

    # Connections -------------------------------------------------------------------------

    def check_address(self, address: str) -> None:
        if not self.attempts.allow(address or "?"):
            raise self.refusal(errors.RATE_LIMITED, "too many connection attempts from this address; retry in a second")

    def admit(self, sid: str, eio_sid: str, claims: dict, sock: socket.socket | None) -> Client:
        """Register a verified connection, or refuse it if a limit says no."""
        user = str(claims.get("sub"))
        entitlements = entitlements_from(claims, self.config["JWT_ENTITLEMENTS_CLAIM"])
        if len(self.clients) >= self.config["MAX_CONNECTIONS"]:
            raise self.refusal(errors.SERVER_BUSY, "this server is full; try again or another replica")
        if not self._count_connection(user):
            raise self.refusal(errors.TOO_MANY_CONNECTIONS, "this user holds its maximum of connections")
        client = Client(sid, user, claims, TokenBucket(self.config["MAX_MESSAGES_PER_SEC"]), sock,
                        entitlements=entitlements)
        self.clients[sid] = client
        self.per_user[user] += 1
        self.fanout.attach(sid, eio_sid)
        metrics.CLIENTS_CONNECTED.inc()
        return client

    def _count_connection(self, user: str) -> bool:
        """Take a place among the user's connections on every replica; with Redis unreachable,
        fall back to this replica's own count rather than refuse everyone."""
        limit = self.config["MAX_CONNECTIONS_PER_USER"]
        try:
            return self.user_connections.add(user, limit)
        except PoolExhausted as exc:
            metrics.REQUESTS_SHED.labels(kind="connect").inc()
            raise self.refusal(errors.SERVER_BUSY, "the server is busy; retry in a moment") from exc
        except redis.RedisError as exc:
            log.warning("cluster-wide connection count unavailable, counting this replica's: %s", exc)
            self.user_connections_drifted = True
            return self.per_user[user] < limit

    def _uncount_connection(self, user: str) -> None:
        try:
            self.user_connections.remove(user)
        except redis.RedisError as exc:
            log.warning("could not uncount a connection of %s: %s", user, exc)
            self.user_connections_drifted = True

    def refusal(self, code: str, message: str) -> ClientError:
        self.rejected[code] += 1
        metrics.CONNECTIONS_REJECTED.labels(reason=code).inc()
        return ClientError(code, message)

    def release(self, sid: str) -> Client | None:
        client = self.clients.pop(sid, None)
        if client is None:
            return None
        self.unsubscribe(client, list(client.subscriptions))
        self.candles.release(sid)
        self.fanout.detach(sid)
        self.per_user[client.user] -= 1
        if self.per_user[client.user] <= 0:
            del self.per_user[client.user]
        self._uncount_connection(client.user)
        metrics.CLIENTS_CONNECTED.dec()
        return client

    def kick(self, client: Client, code: str, message: str) -> None:
        """Tell the client why, then cut the connection, even if a write to it is blocked."""
        log.info("disconnecting %s user=%s: %s", client.sid, client.user, code)
        self.disconnected[code] += 1
        metrics.CLIENTS_DISCONNECTED.labels(reason=code).inc()
        self.send(client.sid, "error", {"code": code, "message": message})
        eio_sid = self.fanout.eio_sid(client.sid)
        connection = socketio.server.eio.sockets.get(eio_sid)
        if client.sock is not None:
            try:
                client.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if connection is not None:
            connection.close(wait=False, abort=True)
        self.release(client.sid)

    def send(self, sid: str, event: str, data: Any) -> None:
        """A control event to one local client (never through the message queue)."""
        socketio.server.emit(event, data, to=sid, ignore_queue=True)

    def _on_slow(self, sid: str) -> None:
        client = self.clients.get(sid)
        if client is not None:
            secs = self.config["SLOW_CLIENT_SECS"]
            self.kick(client, errors.SLOW_CONSUMER, f"the connection read too slowly for {secs:g}s")

    # Subscriptions -----------------------------------------------------------------------

    def subscribe(self, client: Client, tokens: list[int], mode: str, names: dict[int, str]) -> None:
        """Join the rooms; a token already held in another mode moves to the new mode. The
        demand is recorded in Redis first: if Redis cannot take it (redis.RedisError, or
        PoolExhausted under a crowd), nothing changes and the error propagates."""
        if not tokens:
            return
        # An assignment computed from this demand version or a later one has seen these
        # tokens (see check_overflow).
        version = self.demand.add(tokens, mode)
        moving = [t for t in tokens if t in client.subscriptions]
        if moving:
            self.unsubscribe(client, moving)
        for token in tokens:
            socketio.server.enter_room(client.sid, room_for(token, mode), namespace="/")
            self.fanout.join(client.sid, token, mode)
            client.subscriptions[token] = mode
            if token in names:
                client.by_symbol[token] = names[token]
        self.joined_at.update(dict.fromkeys(tokens, version))
        self.listener.dirty = True
        metrics.SUBSCRIPTIONS.inc(len(tokens))

    def unsubscribe(self, client: Client, tokens: list[int]) -> None:
        # A client that disconnected has left its rooms already; asking the manager again would
        # publish a leave_room for every token to every replica through the message queue.
        in_rooms = socketio.server.manager.is_connected(client.sid, "/")
        by_mode: dict[str, list[int]] = {}
        for token in tokens:
            mode = client.subscriptions.pop(token)
            client.by_symbol.pop(token, None)
            by_mode.setdefault(mode, []).append(token)
            if in_rooms:
                socketio.server.leave_room(client.sid, room_for(token, mode), namespace="/")
            self.fanout.leave(client.sid, token, mode)
        self.candles.unsubscribe(client.sid, tokens)
        for mode, mode_tokens in by_mode.items():
            self.demand.remove(mode_tokens, mode)
        for token in tokens:
            if token not in self.demand.counts:
                self.joined_at.pop(token, None)
        self.listener.dirty = True
        metrics.SUBSCRIPTIONS.dec(len(tokens))

    def send_snapshot(self, client: Client, tokens: list[int], mode: str) -> None:
        """The last known tick of each token, read once the live channel is subscribed, so no
        tick falls between the snapshot and the stream (duplicates are dropped by `seq`). Each
        is marked `snapshot: true` with its `age_ms` (now minus its ingest time): the last tick
        may be hours old, or a previous session's, and a client must be able to tell."""
        if not tokens:
            return
        buckets = {keys.bucket_of(t) for t in tokens}
        if not self.listener.wait_live(buckets, LIVE_WAIT_SECS):  # a tick may fall between: counted
            metrics.SNAPSHOTS_UNCONFIRMED.inc()
            log.warning("channels not live after %.1fs; sending the snapshot anyway", LIVE_WAIT_SECS)
        tokens = [t for t in tokens if t in client.subscriptions]  # none it lost meanwhile (not_entitled, ...)
        if not tokens:
            return
        try:
            raws = (self.redis.hmget(keys.LAST_TICKS, tokens) if self.tick_bus is None
                    else read_snapshots(self.tick_bus, tokens))
        except redis.RedisError as exc:  # the live stream still follows; only the head start is lost
            log.warning("no snapshot for %d tokens of %s: %s", len(tokens), client.sid, exc)
            return
        ticks = []
        now_ms = int(time.time() * 1000)
        for raw in raws:
            tick = project(decode(raw), mode) if raw else None
            if tick is not None:
                tick["snapshot"] = True
                tick["age_ms"] = max(0, now_ms - int(tick.get("ingest_ts") or 0))
                ticks.append(tick)
        self.fanout.offer(client.sid, ticks)

    def needed_buckets(self) -> set[int]:
        return {keys.bucket_of(token) for token in self.demand.counts}

    def _flush(self) -> bool:
        pending = self.fanout.flush()
        self.candles.flush()
        return pending

    def _is_behind(self, sid: str) -> bool:
        member = self.fanout.clients.get(sid)
        return member is not None and member.outbox.behind_since is not None

    # Live candles ------------------------------------------------------------------------

    def subscribe_candles(self, client: Client, tokens: list[int], intervals: list[str]) -> None:
        """Stream the candles of `intervals` for `tokens` (already subscribed): once their
        candle channels are live, today's candles so far, then every update (ticker.web.live_candles)."""
        if not tokens or not intervals:
            return
        self.candles.subscribe(client.sid, tokens, intervals)
        self.listener.dirty = True
        if not self.listener.wait_live({keys.bucket_of(t) for t in tokens}, LIVE_WAIT_SECS, candles=True):
            log.warning("candle channels not live after %.1fs; sending today's candles anyway", LIVE_WAIT_SECS)
        pairs = [(t, i) for t in tokens if t in client.subscriptions for i in intervals]
        if self.candles.builder_up is False:
            self.candles.tell_down(client.sid)
        self.candles.begin_history(client.sid, set(pairs))
        history: list[dict] = []
        try:
            for (token, interval), rows in self._candles_today(pairs, time.time()).items():
                history += [candle_json(token, interval, row[:7], row[7]) for row in rows]
        finally:
            self.candles.end_history(client.sid, history)

    def _candles_today(self, pairs: list[tuple[int, str]], now: float) -> dict[tuple[int, str], list[list]]:
        """Today's candles of each series, `[start, o, h, l, c, v, oi, closed]` oldest first:
        Redis's (the forming candle, and what PostgreSQL may not hold yet) over PostgreSQL's
        (what Redis lost in a restart or failover). Either store failing costs only its part:
        the live updates still follow."""
        merged: dict[tuple[int, str], dict[int, list]] = {pair: {} for pair in pairs}
        try:
            stored = candle_store.stored_today(engine_for(self.config["DATABASE_URL"]), pairs, now)
            for pair, rows in stored.items():
                merged[pair].update((row[0], [*row, True]) for row in rows)
        except (sqlalchemy.exc.SQLAlchemyError, psycopg2.Error) as exc:
            log.warning("no stored candles for %d series: %s", len(pairs), exc)
        try:
            for pair, rows in candle_store.today_many(self.redis, pairs, now).items():
                merged[pair].update((row[0], row) for row in rows)
        except redis.RedisError as exc:
            log.warning("no candles of today from Redis for %d series: %s", len(pairs), exc)
        return {pair: [rows[start] for start in sorted(rows)] for pair, rows in merged.items()}

    def check_candles(self, now: float) -> None:
        """While clients hold live candles, whether a candle builder reports (once a turn of the
        upstream watch): its clients are told when it stops and when it is back."""
        if not self.candles.wanted:
            return
        try:
            report = builder_report(self.background, now)
        except redis.RedisError:  # the bus is down: its own notices cover that
            return
        up = bool(report and report["up"])
        self.candles.builder_seen(up, "" if up else BUILDER_DOWN if report else NO_BUILDER)

    # Upstream overflow --------------------------------------------------------------------

    def check_overflow(self) -> None:
        """Two replicas can each admit tokens against the same free room upstream; the assigner
        then leaves some in overflow. Their clients are told (`error` `capacity_exhausted` with
        the tokens, and `unsubscribed` with that reason) and stop holding them. A token counts
        only once the assignment was computed from demand that includes this replica's latest
        subscribe to it, so room that opened after an older assignment is never mistaken."""
        if not self.joined_at:
            return
        seen, overflow = assignment.overflow(self.background)
        stranded = [t for t in overflow if self.joined_at.get(t, seen + 1) <= seen]
        if not stranded:
            return
        log.warning("no room upstream for %d subscribed tokens; unsubscribing their clients", len(stranded))
        for client in list(self.clients.values()):
            lost = [t for t in stranded if t in client.subscriptions]
            if lost:
                self._drop_overflowed(client, lost)

    def _drop_overflowed(self, client: Client, tokens: list[int]) -> None:
        self.unsubscribe(client, tokens)
        self.send(client.sid, "error", {
            "code": errors.CAPACITY_EXHAUSTED, "tokens": tokens,
            "message": "every Kite connection filled up before these instruments got a place: unsubscribed"})
        self.send(client.sid, "unsubscribed", {"tokens": tokens, "total": len(client.subscriptions),
                                               "reason": errors.CAPACITY_EXHAUSTED})

    # Upstream outages ---------------------------------------------------------------------

    def track_upstream(self, now: float) -> None:
        """Learn whether each held token's ticks can flow, and tell the clients holding those
        whose state changed (`error` `upstream_unavailable` with a reason, `upstream_restored`).
        Subscriptions are kept whatever the upstream does."""
        tokens = list(self.demand.counts)
        if not self.listener.connected and self.config["WEB_TICK_DELIVERY"]:
            states: dict[int, str | None] = dict.fromkeys(tokens, BUS_UNAVAILABLE)
        else:
            try:
                states = token_states(self.background, tokens, now)
            except redis.RedisError:
                states = dict.fromkeys(tokens, BUS_UNAVAILABLE)
            if unheard := self.listener.unheard_buckets():  # a cluster master lost: its tokens only
                states.update((t, BUS_UNAVAILABLE) for t in tokens if keys.bucket_of(t) in unheard)
        changes = self.upstream.update(states, now)
        for reason, down in changes.down.items():
            log.warning("upstream unavailable for %d tokens: %s", len(down), reason)
            self._tell_holders(down, lambda client, held, r=reason: self.tell_unavailable(client, held, r))
        if changes.restored:
            log.info("upstream restored for %d tokens", len(changes.restored))
            self._tell_holders(changes.restored, lambda client, held: self.send(
                client.sid, "upstream_restored", {"tokens": held}))

    def tell_unavailable(self, client: Client, tokens: list[int], reason: str) -> None:
        metrics.UPSTREAM_NOTICES.labels(reason=reason).inc()
        self.send(client.sid, "error", {"code": errors.UPSTREAM_UNAVAILABLE, "reason": reason, "tokens": tokens,
                                        "message": errors.UPSTREAM_REASONS.get(reason, reason)})

    def tell_if_unavailable(self, client: Client, tokens: list[int]) -> None:
        """A client that just subscribed to tokens already announced down hears it at once."""
        for reason, down in self.upstream.down_among(tokens).items():
            self.tell_unavailable(client, down, reason)

    def _tell_holders(self, tokens: list[int], tell: Any) -> None:
        held: dict[str, list[int]] = {}
        for token in tokens:
            for sids in self.fanout.members.get(token, {}).values():
                for sid in sids:
                    held.setdefault(sid, []).append(token)
        for sid, client_tokens in held.items():
            client = self.clients.get(sid)
            if client is not None:
                tell(client, sorted(client_tokens))

    # Registry reloads --------------------------------------------------------------------

    def on_notice(self, channel: str, notice: Any) -> None:
        if channel == keys.REGISTRY_RELOADED and isinstance(notice, dict):
            renumbered = {int(old): int(new) for old, new in (notice.get("renumbered") or {}).items()}
            removed = {int(token) for token in notice.get("removed") or []}
            for client in list(self.clients.values()):
                self._follow_registry(client, renumbered, removed)

    def _follow_registry(self, client: Client, renumbered: dict[int, int], removed: set[int]) -> None:
        """Subscriptions made by name follow their instrument's new token; tokens gone from
        the registry are unsubscribed. The client hears both as `unsubscribed`/`subscribed`."""
        gone = [t for t in client.subscriptions if t in removed]
        if gone:
            self.unsubscribe(client, gone)
            self.send(client.sid, "unsubscribed", {"tokens": gone, "total": len(client.subscriptions),
                                                   "reason": "instrument_removed"})
        moved = {t: renumbered[t] for t in client.by_symbol if t in renumbered}
        by_mode: dict[str, list[int]] = {}
        names = {}
        for old, new in moved.items():
            by_mode.setdefault(client.subscriptions[old], []).append(new)
            names[new] = client.by_symbol[old]
        if not moved:
            return
        refused = self._refused_after_reload(client, list(moved.values()))
        self.unsubscribe(client, list(moved))
        self.send(client.sid, "unsubscribed", {"tokens": list(moved), "total": len(client.subscriptions),
                                               "reason": "instrument_renumbered"})
        for mode, targets in by_mode.items():
            tokens = [t for t in targets if t not in refused]
            rejected = [refused[t] for t in targets if t in refused]
            self.subscribe(client, tokens, mode, names)
            self.send(client.sid, "subscribed", {"tokens": tokens, "mode": mode, "total": len(client.subscriptions),
                                                 "rejected": rejected, "reason": "instrument_renumbered"})
            if tokens:
                socketio.start_background_task(self.send_snapshot, client, tokens, mode)

    def _refused_after_reload(self, client: Client, tokens: list[int]) -> dict[int, dict]:
        """Those of the new `tokens` a renumbering would move the client to that its
        entitlements do not cover (the new registry says which exchange): their rejections."""
        if not client.entitlements.restricted:
            return {}
        refused = {}
        for token, exchange in zip(tokens, self.registry.exchanges(tokens), strict=True):
            if exchange is not None and not client.entitlements.allows(exchange):
                metrics.ENTITLEMENT_REFUSALS.labels(exchange=metric_label(exchange), event="reload").inc()
                refused[token] = rejection(token, exchange)
        return refused

    # JWT expiry on open connections ------------------------------------------------------

    def sweep_expired(self, now: float) -> None:
        """A connection whose JWT expired is told so, then cut after the grace period unless
        it sent a fresh token (`reauth`). Expired counts as verification does, with the
        clock-skew leeway: a token just accepted is never taken for expired the next instant."""
        grace = self.config["TOKEN_EXPIRY_GRACE_SECS"]
        leeway = self.config["JWT_DECODE_LEEWAY"]
        for client in list(self.clients.values()):
            if client.expires_at + leeway > now:
                continue
            if client.expired_at is None:
                client.expired_at = now
                self.send(client.sid, "error", {
                    "code": errors.TOKEN_EXPIRED, "grace_secs": grace,
                    "message": f"your token has expired: send a fresh one with `reauth` within {grace:g}s"})
            elif now - client.expired_at >= grace:
                self.kick(client, errors.TOKEN_EXPIRED, "your token expired and no fresh token came")

    def sweep_aged(self, now: float) -> None:
        """A connection older than MAX_CONNECTION_SECS is told so and cut, whatever its token."""
        cap = self.config["MAX_CONNECTION_SECS"]
        if cap <= 0:
            return
        for client in list(self.clients.values()):
            if now - client.connected_at >= cap:
                self.kick(client, errors.CONNECTION_MAX_AGE,
                          f"the connection reached its maximum life of {cap:g}s: reconnect")

    def reauth(self, client: Client, claims: dict) -> None:
        if str(claims.get("sub")) != client.user:
            raise ClientError(errors.TOKEN_INVALID, "a fresh token must be for the same user")
        entitlements = entitlements_from(claims, self.config["JWT_ENTITLEMENTS_CLAIM"])
        lost = self.not_entitled({client: entitlements})  # may raise: then nothing has changed
        client.claims = claims
        client.expired_at = None
        client.entitlements = entitlements
        self.drop(lost, "reauth")

    # Entitlements ------------------------------------------------------------------------

    def not_entitled(self, entitlements: dict[Client, Entitlements]) -> dict[Client, dict[int, str]]:
        """For each client, the tokens it holds that `entitlements` do not cover (token ->
        exchange); one registry lookup for all of them."""
        held = sorted({token for client in entitlements for token in client.subscriptions})
        if not held:
            return {}
        exchange_of = dict(zip(held, self.registry.exchanges(held), strict=True))
        lost: dict[Client, dict[int, str]] = {}
        for client, allowed in entitlements.items():
            tokens = {t: exchange_of[t] for t in client.subscriptions
                      if exchange_of[t] is not None and not allowed.allows(exchange_of[t])}
            if tokens:
                lost[client] = tokens
        return lost

    def drop(self, lost: dict[Client, dict[int, str]], event: str) -> None:
        """Unsubscribe clients from tokens they may no longer receive (see `not_entitled`),
        telling each `unsubscribed` with the reason `not_entitled`; counted by exchange."""
        for client, tokens in lost.items():
            for exchange in tokens.values():
                metrics.ENTITLEMENT_REFUSALS.labels(exchange=metric_label(exchange), event=event).inc()
            self.unsubscribe(client, list(tokens))
            self.send(client.sid, "unsubscribed", {"tokens": list(tokens), "total": len(client.subscriptions),
                                                   "reason": errors.NOT_ENTITLED})

    # Stats -------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "replica": self.id,
            "clients": len(self.clients),
            "users": len(self.per_user),
            "subscriptions": sum(len(c.subscriptions) for c in self.clients.values()),
            "tokens": len(self.demand.counts),
            "behind": self.fanout.behind(),
            **{f"ticks_{name}": value for name, value in self.fanout.totals.items() if name != "frames"},
            "frames_sent": self.fanout.totals["frames"],
            "connections_rejected": dict(self.rejected),
            "disconnected": dict(self.disconnected),
            "updated": time.time(),
        }

    def publish_stats(self) -> None:
        pipe = self.background.pipeline(transaction=False)
        pipe.set(keys.replica_stats(self.id), json.dumps(self.stats()), ex=STATS_TTL_SECS)
        pipe.sadd(keys.STATS_REPLICAS, self.id)
        pipe.execute()

    # Background work ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the background work of a serving process (not of CLI or Celery processes)."""
        if self.config["WEB_TICK_DELIVERY"]:
            socketio.start_background_task(self.listener.run_forever)
        for loop in self.loops:
            socketio.start_background_task(loop.run_forever)
        log.info("replica %s started", self.id)

    def keep_connections_counted(self) -> None:
        drifted, self.user_connections_drifted = self.user_connections_drifted, False
        try:
            self.user_connections.heartbeat(self.per_user, rewrite=drifted, client=self.background)
        except redis.RedisError:
            self.user_connections_drifted = True
            raise


class ReplicaLoop(Loop):
    """A loop of the replica's, sleeping cooperatively in its async mode."""

    def __init__(self, replica: Replica):
        super().__init__(socketio.sleep)
        self.replica = replica


class Heartbeat(ReplicaLoop):
    """Keeps the replica's demand and connection counts alive in Redis (rewriting them whole
    after Redis lost them) and publishes its figures for /ws/stats."""

    name = "heartbeat"
    every_secs = HEARTBEAT_SECS

    def turn(self) -> None:
        self.replica.demand.heartbeat(self.replica.background)
        self.replica.keep_connections_counted()
        self.replica.publish_stats()


class ExpirySweep(ReplicaLoop):
    """Tells connections whose JWT expired, and cuts them after the grace period; cuts
    connections that reached their maximum life."""

    name = "expiry_sweep"
    every_secs = SWEEP_SECS

    def turn(self) -> None:
        now = time.time()
        self.replica.sweep_expired(now)
        self.replica.sweep_aged(now)


class UpstreamWatch(ReplicaLoop):
    """Tells clients when their tokens' ticks stop (and why) or resume, and when their
    subscriptions found no room upstream (see Replica.track_upstream, Replica.check_overflow)."""

    name = "upstream_watch"
    every_secs = UPSTREAM_CHECK_SECS

    def turn(self) -> None:
        self.replica.check_overflow()
        now = time.time()
        self.replica.track_upstream(now)
        self.replica.check_candles(now)


def cluster_stats(client: Any) -> dict[str, Any]:
    """Every live replica's last published stats, and their sums."""
    replicas = []
    for replica_id in sorted(client.smembers(keys.STATS_REPLICAS)):
        raw = client.get(keys.replica_stats(replica_id))
        if raw is None:
            client.srem(keys.STATS_REPLICAS, replica_id)
        else:
            replicas.append(json.loads(raw))
    summed = ("clients", "subscriptions", "behind", "ticks_delivered", "frames_sent", "ticks_conflated",
              "ticks_dropped")
    totals = {name: sum(r.get(name, 0) for r in replicas) for name in summed}
    totals["users"] = users_connected(client)
    totals["tokens"] = len(set().union(*read_demand(client)))  # distinct tokens wanted anywhere
    totals["replicas"] = len(replicas)
    return {"totals": totals, "replicas": replicas}


_replica: Replica | None = None


def replica() -> Replica:
    global _replica
    if _replica is None:
        from flask import current_app

        _replica = Replica(current_app._get_current_object())
    return _replica
