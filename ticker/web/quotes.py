"""`GET /quote`, `/quote/ohlc`, `/quote/ltp`: Kite Connect's market quotes, answered from the
last ticks the service holds (docs/API.md, "Market quotes").

An instrument some shard streams in a rich enough mode is answered at once from its last tick
(keys.LAST_TICKS). One nobody streams is subscribed on demand, within the pool's room
(ticker.bus.assignment.admissible), through this replica's demand like a Socket.IO client's
subscription, and answered once its first tick arrives, or reported `pending` after
QUOTE_WAIT_SECS. The replica holds such a subscription for QUOTE_HOLD_SECS after the last quote
that asked for it, then lets it go; the shards drop it after UNSUBSCRIBE_GRACE_SECS more, as
any demand.

Authentication, envelopes and dependency errors: ticker.web.kite_rest. The response is Kite's
`{"status": "success", "data": {...}}` with two more keys the official client ignores:
`omitted` (each instrument left out of `data`, with why) and `subscribed` (those subscribed on
demand for this request).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis
from flask import Blueprint, Response, current_app, request

from ticker import metrics
from ticker.bus import assignment, keys
from ticker.bus.demand import ReplicaDemand
from ticker.bus.ticks import MODE_RANK, decode, encode
from ticker.web import errors
from ticker.web.entitlements import Entitlements, entitlements_from, metric_label
from ticker.web.errors import ClientError
from ticker.web.kite_quotes import TICK_MODE, Wanted, answers, parse_instruments, shape
from ticker.web.kite_rest import (
    INPUT_EXCEPTION,
    NETWORK_EXCEPTION,
    PERMISSION_EXCEPTION,
    TOKEN_EXCEPTION,
    KiteError,
    kite_endpoint,
)
from ticker.web.loops import Loop

bp = Blueprint("quotes", __name__)

POLL_SECS = 0.05  # how often a request waiting for first ticks looks for them
PENDING = "pending"  # subscribed on demand; no tick within QUOTE_WAIT_SECS (ask again)


class QuoteCache:
    """Reads quotes' ticks and holds the on-demand subscriptions of quote requests.

    A hold is this replica's demand (`ReplicaDemand`, one count per token, in the mode the
    endpoint needs), refreshed by every quote that names the token and released by `release`
    (a loop, every second) QUOTE_HOLD_SECS after the last one. Greenlets share the holds: a
    token is marked held before Redis is asked, so two requests never count it twice."""

    def __init__(self, client: redis.Redis, demand: ReplicaDemand, hold_secs: float,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic):
        self.redis = client
        self.demand = demand
        self.hold_secs = hold_secs
        self.sleep = sleep
        self.clock = clock
        self.held: dict[int, tuple[str, float]] = {}  # token -> (mode held, until, by `clock`)

    def ready(self, tokens: list[int], endpoint: str) -> tuple[dict[int, dict], dict[int, tuple]]:
        """The last ticks of those of `tokens` a shard streams in a mode that answers
        `endpoint` (token -> tick), and the (epoch, seq) of every other tick found, so a
        later tick can be told from it. Refreshes the holds of the tokens it names."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(keys.LAST_TICKS, tokens)
        pipe.hmget(keys.ASSIGNED_MODE, tokens)
        raws, streamed = pipe.execute()
        ready, stale = {}, {}
        for token, raw, mode in zip(tokens, raws, streamed, strict=True):
            tick = decode(raw) if raw else None
            if tick is None:
                continue
            if MODE_RANK.get(mode, -1) >= MODE_RANK[TICK_MODE[endpoint]] and answers(tick, endpoint):
                ready[token] = tick
            else:
                stale[token] = _position(tick)
        self._refresh(ready)
        return ready, stale

    def subscribe(self, tokens: list[int], endpoint: str, stale: dict[int, tuple], wait_secs: float) -> dict[int, dict]:
        """Hold `tokens` in the mode `endpoint` needs and wait up to `wait_secs` for a tick of
        each newer than what `stale` saw; returns those that came (token -> tick). Raises
        redis.RedisError when the demand could not be recorded (then nothing is held)."""
        self.hold(tokens, TICK_MODE[endpoint])
        arrived: dict[int, dict] = {}
        deadline = time.monotonic() + wait_secs
        waiting = list(tokens)
        while waiting and time.monotonic() < deadline:
            self.sleep(POLL_SECS)
            for token, raw in zip(waiting, self.redis.hmget(keys.LAST_TICKS, waiting), strict=True):
                tick = decode(raw) if raw else None
                if tick is not None and answers(tick, endpoint) and _position(tick) != stale.get(token):
                    arrived[token] = tick
            waiting = [t for t in waiting if t not in arrived]
        return arrived

    def hold(self, tokens: list[int], mode: str) -> None:
        """Count `tokens` in this replica's demand in `mode` (a held token in a poorer mode
        moves to `mode`) until QUOTE_HOLD_SECS from now."""
        until = self.clock() + self.hold_secs
        new = [t for t in tokens if t not in self.held]
        richer = {t: self.held[t][0] for t in tokens if t in self.held and MODE_RANK[self.held[t][0]] < MODE_RANK[mode]}
        for token in tokens:
            held_mode = self.held.get(token, (mode,))[0]
            self.held[token] = (mode if MODE_RANK[mode] > MODE_RANK[held_mode] else held_mode, until)
        try:
            if new or richer:
                self.demand.add(new + list(richer), mode)
        except redis.RedisError:
            for token in new:
                self.held.pop(token, None)
            for token, old in richer.items():
                self.held[token] = (old, until)
            raise
        for token, old in richer.items():
            self.demand.remove([token], old)
        metrics.QUOTE_HOLDS.set(len(self.held))

    def release(self) -> list[int]:
        """Let go of the holds no quote refreshed for QUOTE_HOLD_SECS; returns their tokens."""
        now = self.clock()
        expired: dict[str, list[int]] = {}
        for token, (mode, until) in list(self.held.items()):
            if until <= now:
                del self.held[token]
                expired.setdefault(mode, []).append(token)
        for mode, tokens in expired.items():
            self.demand.remove(tokens, mode)  # a removal Redis missed is repaired by the heartbeat
        metrics.QUOTE_HOLDS.set(len(self.held))
        return [t for tokens in expired.values() for t in tokens]

    def _refresh(self, tokens: dict[int, Any]) -> None:
        until = self.clock() + self.hold_secs
        for token in tokens:
            if token in self.held:
                self.held[token] = (self.held[token][0], until)


def _position(tick: dict[str, Any]) -> tuple:
    """Where a tick stands in its token's sequence (ticker.bus.ticks): a later one differs."""
    return tick.get("epoch"), tick.get("seq")


class QuoteRelease(Loop):
    """Releases the quote holds nobody asked about for QUOTE_HOLD_SECS."""

    name = "quote_release"
    every_secs = 1.0

    def __init__(self, cache: QuoteCache, sleep: Callable[[float], None]):
        super().__init__(sleep)
        self.cache = cache

    def turn(self) -> None:
        self.cache.release()


# Endpoints --------------------------------------------------------------------------------


@bp.get("/quote")
@kite_endpoint
def quote(claims: dict) -> Response:
    """Full quotes (Kite's `/quote`, at most 500 instruments)."""
    return answer("quote", claims)


@bp.get("/quote/ohlc")
@kite_endpoint
def ohlc(claims: dict) -> Response:
    """OHLC quotes (Kite's `/quote/ohlc`, at most 1000 instruments)."""
    return answer("ohlc", claims)


@bp.get("/quote/ltp")
@kite_endpoint
def ltp(claims: dict) -> Response:
    """Last prices (Kite's `/quote/ltp`, at most 1000 instruments)."""
    return answer("ltp", claims)


def answer(endpoint: str, claims: dict) -> Response:
    """Kite's envelope of `endpoint`'s quotes for the request's `i` instruments, with
    `omitted` and `subscribed` (see the module's docstring); KiteError when nothing could be
    answered for a reason other than unknown instruments (see `_refusal`)."""
    from ticker.web.replica import replica  # the replica imports this module for its loop

    state = replica()
    entitlements = _entitlements(claims)
    try:
        wanted = parse_instruments(request.args.getlist("i"), endpoint)
    except ClientError as exc:
        raise KiteError(400, INPUT_EXCEPTION, exc.code, exc.message) from exc
    omitted: dict[str, str] = {}
    token_of = _resolve(state.registry, wanted, entitlements, omitted)
    tokens = list(dict.fromkeys(token_of.values()))
    ticks, stale = state.quotes.ready(tokens, endpoint) if tokens else ({}, {})
    subscribed = _subscribe([t for t in tokens if t not in ticks], endpoint, stale, ticks, omitted, token_of)
    data = {key: shape(ticks[token], endpoint) for key, token in token_of.items() if token in ticks}
    _count(endpoint, len(data), omitted)
    if not data and set(omitted.values()) - {errors.UNKNOWN_INSTRUMENT, errors.UNKNOWN_TOKEN}:
        raise _refusal(omitted)
    return Response(encode({"status": "success", "data": data, "omitted": omitted,
                            "subscribed": [key for key, token in token_of.items() if token in subscribed]}),
                    mimetype="application/json")


def _entitlements(claims: dict) -> Entitlements:
    try:
        return entitlements_from(claims, current_app.config["JWT_ENTITLEMENTS_CLAIM"])
    except ClientError as exc:
        raise KiteError(403, TOKEN_EXCEPTION, exc.code, exc.message) from exc


def _resolve(registry: Any, wanted: list[Wanted], entitlements: Entitlements,
             omitted: dict[str, str]) -> dict[str, int]:
    """key -> token of the instruments that exist and the JWT is entitled to; the others go
    to `omitted` (unknown_instrument, unknown_token, not_entitled). Names on exchanges the JWT
    does not cover are not even looked up."""
    names = [w for w in wanted if w.symbol is not None]
    refused = [w for w in names if not entitlements.allows(w.symbol.partition(":")[0])]
    for w in refused:
        _not_entitled(w, w.symbol.partition(":")[0], omitted)
    names = [w for w in names if w not in refused]
    found = dict(zip([w.key for w in names], registry.resolve([w.symbol for w in names]), strict=True)) if names else {}
    numbered = [w for w in wanted if w.token is not None]
    exchanges = dict(zip([w.key for w in numbered], registry.exchanges([w.token for w in numbered]),
                         strict=True)) if numbered else {}
    token_of = {}
    for w in wanted:
        if w.key in found:
            if found[w.key] is None:
                omitted[w.key] = errors.UNKNOWN_INSTRUMENT
            else:
                token_of[w.key] = found[w.key]
        elif w.key in exchanges:
            exchange = exchanges[w.key]
            if exchange is None:
                omitted[w.key] = errors.UNKNOWN_TOKEN
            elif not entitlements.allows(exchange):
                _not_entitled(w, exchange, omitted)
            else:
                token_of[w.key] = w.token
    return token_of


def _not_entitled(wanted: Wanted, exchange: str, omitted: dict[str, str]) -> None:
    metrics.ENTITLEMENT_REFUSALS.labels(exchange=metric_label(exchange), event="quote").inc()
    omitted[wanted.key] = errors.NOT_ENTITLED


def _subscribe(missing: list[int], endpoint: str, stale: dict[int, tuple], ticks: dict[int, dict],
               omitted: dict[str, str], token_of: dict[str, int]) -> set[int]:
    """Subscribe the `missing` tokens on demand, as far as the pool has room, and wait for
    their first ticks (added to `ticks`); the tokens that came, and the others in `omitted`
    (capacity_exhausted, pending)."""
    if not missing:
        return set()
    from ticker.web.replica import replica

    state = replica()
    admitted = assignment.admissible(state.redis, missing)
    arrived = state.quotes.subscribe([t for t in missing if t in admitted], endpoint, stale,
                                     current_app.config["QUOTE_WAIT_SECS"]) if admitted else {}
    ticks.update(arrived)
    for key, token in token_of.items():
        if token in missing and token not in arrived:
            omitted[key] = PENDING if token in admitted else errors.CAPACITY_EXHAUSTED
    return set(arrived)


def _count(endpoint: str, answered: int, omitted: dict[str, str]) -> None:
    metrics.QUOTE_INSTRUMENTS.labels(endpoint=endpoint, outcome="answered").inc(answered)
    for code in omitted.values():
        metrics.QUOTE_INSTRUMENTS.labels(endpoint=endpoint, outcome=code).inc()


def _refusal(omitted: dict[str, str]) -> KiteError:
    """The error for a request none of whose instruments could be answered: 504 `quote_pending`
    when some are on their way (ask again), else 503 `capacity_exhausted`, else 403
    `not_entitled`."""
    codes = set(omitted.values())
    listed = ", ".join(f"{key} ({code})" for key, code in list(omitted.items())[:10])
    if PENDING in codes:
        return KiteError(504, NETWORK_EXCEPTION, errors.QUOTE_PENDING,
                         f"no tick arrived in time for instruments subscribed on demand; ask again: {listed}")
    if errors.CAPACITY_EXHAUSTED in codes:
        return KiteError(503, NETWORK_EXCEPTION, errors.CAPACITY_EXHAUSTED,
                         f"every Kite connection is full: no room upstream for {listed}")
    return KiteError(403, PERMISSION_EXCEPTION, errors.NOT_ENTITLED, f"your entitlements do not cover {listed}")
