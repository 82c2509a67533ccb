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
from dataclasses import dataclass
from typing import Any

import redis
from flask import Blueprint, Response, current_app, request

from ticker import metrics
from ticker.bus import assignment, keys
from ticker.bus.demand import ReplicaDemand
from ticker.bus.sharded import read_snapshots
from ticker.bus.ticks import MODE_RANK
from ticker.web import errors
from ticker.web.entitlements import Entitlements, entitlements_from, metric_label
from ticker.web.errors import ClientError
from ticker.web.kite_quotes import (
    TICK_MODE,
    Cut,
    Cuts,
    Wanted,
    answers,
    envelope,
    instrument_values,
    parse_instruments,
)
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


# KEYS: the registry's token -> name and name -> token hashes, LAST_TICKS, ASSIGNED_MODE.
# ARGV: the count of names, the names, then the tokens. Returns false without a mirror, else
# four strings (few replies to parse, whatever the count of instruments): the token of each
# name ("," between, "" for unknown ones), the name of each token ("\n" between), and for every
# token found (those of the names, then the tokens, in order) its last tick ("\n" between: JSON
# holds no raw newline) and the mode it is streamed in ("," between); "" for none.
LOOKUP_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local n = tonumber(ARGV[1])
local by_name, by_token, found = {}, {}, {}
if n > 0 then by_name = redis.call('HMGET', KEYS[2], unpack(ARGV, 2, n + 1)) end
if #ARGV > n + 1 then by_token = redis.call('HMGET', KEYS[1], unpack(ARGV, n + 2, #ARGV)) end
for i = 1, #by_name do
  if by_name[i] then found[#found + 1] = by_name[i] else by_name[i] = '' end
end
for i = 1, #by_token do
  if by_token[i] then found[#found + 1] = ARGV[n + 1 + i] else by_token[i] = '' end
end
local ticks, modes = {}, {}
if #found > 0 then
  ticks, modes = redis.call('HMGET', KEYS[3], unpack(found)), redis.call('HMGET', KEYS[4], unpack(found))
  for i = 1, #found do
    if not ticks[i] then ticks[i] = '' end
    if not modes[i] then modes[i] = '' end
  end
end
return {table.concat(by_name, ','), table.concat(by_token, '\\n'), table.concat(ticks, '\\n'),
        table.concat(modes, ',')}
"""


@dataclass
class Lookup:
    """What `QuoteCache.lookup` read: `tokens` of the names asked (None: unknown), `names` of
    the tokens asked ("EXCHANGE:TRADINGSYMBOL", None: unknown), and `found`: token -> (last
    tick's JSON or None, streamed mode or None), or None when the registry answered instead
    (then `QuoteCache.last_ticks` reads the ticks)."""

    tokens: list[int | None]
    names: list[str | None]
    found: dict[int, tuple] | None


class QuoteCache:
    """Reads quotes' ticks and holds the on-demand subscriptions of quote requests.

    A hold is this replica's demand (`ReplicaDemand`, one count per token, in the mode the
    endpoint needs), refreshed by every quote that names the token and released by `release`
    (a loop, every second) QUOTE_HOLD_SECS after the last one. Greenlets share the holds: a
    token is marked held before Redis is asked, so two requests never count it twice."""

    def __init__(self, client: redis.Redis, demand: ReplicaDemand, hold_secs: float,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                 tick_bus: Any = None):
        self.redis = client
        # A cluster tick bus (Config.TICK_BUS_URL) keeps each bucket's snapshots on its own
        # shard: the ticks are read there, after the registry lookup.
        self.tick_bus = tick_bus
        self.demand = demand
        self.hold_secs = hold_secs
        self.sleep = sleep
        self.clock = clock
        self.held: dict[int, tuple[str, float]] = {}  # token -> (mode held, until, by `clock`)
        self.cuts = Cuts()
        self._lookup = client.register_script(LOOKUP_SCRIPT)

    def lookup(self, symbols: list[str], tokens: list[int]) -> Lookup | None:
        """In one round trip (the hot path): the token of each of `symbols`, the
        "EXCHANGE:TRADINGSYMBOL" of each of `tokens` (None for unknown ones), and the last tick
        and streamed mode of every token found. None when the registry's mirror is missing
        (Redis lost it): then the Registry answers (and rebuilds it) and `last_ticks` reads."""
        reply = self._lookup(keys=[keys.REGISTRY_TOKENS, keys.REGISTRY_SYMBOLS, keys.LAST_TICKS, keys.ASSIGNED_MODE],
                             args=[len(symbols), *symbols, *tokens])
        if not reply:
            return None
        by_name, by_token, raws, modes = reply
        token_of = [int(t) if t else None for t in by_name.split(",")] if symbols else []
        name_of = [name or None for name in by_token.split("\n")] if tokens else []
        found = [t for t in token_of if t is not None] + [t for t, n in zip(tokens, name_of, strict=True) if n]
        raws_of = raws.split("\n") if found else []
        if found and self.tick_bus is not None:
            raws_of = self._snapshots(found)
        pairs = zip(raws_of, modes.split(","), strict=True) if found else ()
        return Lookup(token_of, name_of, {t: (raw or None, mode or None) for t, (raw, mode) in zip(found, pairs,
                                                                                                 strict=True)})

    def last_ticks(self, tokens: list[int]) -> dict[int, tuple]:
        """token -> (its last tick's JSON or None, the mode streamed or None)."""
        if self.tick_bus is not None:
            raws, modes = self._snapshots(tokens), self.redis.hmget(keys.ASSIGNED_MODE, tokens)
        else:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hmget(keys.LAST_TICKS, tokens)
            pipe.hmget(keys.ASSIGNED_MODE, tokens)
            raws, modes = pipe.execute()
        return dict(zip(tokens, zip(raws, modes, strict=True), strict=True))

    def _snapshots(self, tokens: list[int]) -> list[str | None]:
        """The last tick (JSON) of each token, None where there is none, wherever the bus keeps them."""
        if self.tick_bus is None:
            return self.redis.hmget(keys.LAST_TICKS, tokens)
        return read_snapshots(self.tick_bus, tokens)

    def ready(self, found: dict[int, tuple], tokens: list[int], endpoint: str) -> tuple[dict[int, Cut], dict]:
        """Of `tokens` (with `found` from `lookup` or `last_ticks`), the last ticks of those a
        shard streams in a mode that answers `endpoint` (token -> Cut), and the (epoch, seq)
        of every other tick found, so a later tick can be told from it. Refreshes the holds
        of the tokens it answers."""
        ready, stale = {}, {}
        for token in tokens:
            raw, mode = found.get(token, (None, None))
            if not raw:
                continue
            cut = self.cuts.get(raw)
            if answers(mode, endpoint) and answers(cut.mode, endpoint):
                ready[token] = cut
            else:
                stale[token] = cut.position
        self._keep(ready, endpoint)
        return ready, stale

    def subscribe(self, tokens: list[int], endpoint: str, stale: dict[int, tuple], wait_secs: float) -> dict[int, Cut]:
        """Hold `tokens` in the mode `endpoint` needs and wait up to `wait_secs` for a tick of
        each newer than what `stale` saw; returns those that came (token -> tick). Raises
        redis.RedisError when the demand could not be recorded (then nothing is held)."""
        self.hold(tokens, TICK_MODE[endpoint])
        arrived: dict[int, Cut] = {}
        deadline = time.monotonic() + wait_secs
        waiting = list(tokens)
        while waiting and time.monotonic() < deadline:
            self.sleep(POLL_SECS)
            for token, raw in zip(waiting, self._snapshots(waiting), strict=True):
                cut = self.cuts.get(raw) if raw else None
                if cut is not None and answers(cut.mode, endpoint) and cut.position != stale.get(token):
                    arrived[token] = cut
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

    def _keep(self, tokens: dict[int, Any], endpoint: str) -> None:
        """Polling keeps an instrument streamed: each answered token is held (again), not only
        those this replica subscribed, since one answered from an upstream grace period would
        otherwise be dropped while quotes still name it."""
        if all(token in self.held for token in tokens):  # the common case: refresh in place
            self._refresh(tokens)
            return
        try:
            self.hold(list(tokens), TICK_MODE[endpoint])
        except redis.RedisError:  # answered all the same; the next quote holds them
            self._refresh(tokens)

    def _refresh(self, tokens: dict[int, Any]) -> None:
        until = self.clock() + self.hold_secs
        for token in tokens:
            if token in self.held:
                self.held[token] = (self.held[token][0], until)


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
        values = instrument_values(request.query_string.decode("latin-1"))
        wanted = parse_instruments(request.args.getlist("i") if values is None else values, endpoint)
    except ClientError as exc:
        raise KiteError(400, INPUT_EXCEPTION, exc.code, exc.message) from exc
    omitted: dict[str, str] = {}
    token_of, found = _resolve(state, wanted, entitlements, omitted)
    tokens = list(dict.fromkeys(token_of.values()))
    ticks, stale = state.quotes.ready(found if found is not None else state.quotes.last_ticks(tokens), tokens,
                                      endpoint) if tokens else ({}, {})
    subscribed = _subscribe([t for t in tokens if t not in ticks], endpoint, stale, ticks, omitted, token_of)
    quotes = [(key, ticks[token].quote(endpoint)) for key, token in token_of.items() if token in ticks]
    _count(endpoint, len(quotes), omitted)
    if not quotes and set(omitted.values()) - {errors.UNKNOWN_INSTRUMENT, errors.UNKNOWN_TOKEN}:
        raise _refusal(omitted)
    extra = {"omitted": omitted, "subscribed": [key for key, token in token_of.items() if token in subscribed]}
    return Response(envelope(quotes, extra), mimetype="application/json")


def _entitlements(claims: dict) -> Entitlements:
    try:
        return entitlements_from(claims, current_app.config["JWT_ENTITLEMENTS_CLAIM"])
    except ClientError as exc:
        raise KiteError(403, TOKEN_EXCEPTION, exc.code, exc.message) from exc


def _resolve(state: Any, wanted: list[Wanted], entitlements: Entitlements,
             omitted: dict[str, str]) -> tuple[dict[str, int], dict[int, tuple] | None]:
    """key -> token of the instruments that exist and the JWT is entitled to, the others in
    `omitted` (unknown_instrument, unknown_token, not_entitled); and the last ticks the lookup
    read on the way (None when the registry answered: see QuoteCache.lookup). Names on
    exchanges the JWT does not cover are not even looked up."""
    names = []
    for w in wanted:
        if w.symbol is not None and not entitlements.allows(w.symbol.partition(":")[0]):
            _not_entitled(w, w.symbol.partition(":")[0], omitted)
        elif w.symbol is not None:
            names.append(w)
    numbered = [w for w in wanted if w.token is not None]
    looked = state.quotes.lookup([w.symbol for w in names], [w.token for w in numbered])
    if looked is None:
        looked = Lookup(state.registry.resolve([w.symbol for w in names]) if names else [],
                        _names(state.registry.exchanges([w.token for w in numbered])) if numbered else [], None)
    token_of = {}
    for w, token in zip(names, looked.tokens, strict=True):
        if token is None:
            omitted[w.key] = errors.UNKNOWN_INSTRUMENT
        else:
            token_of[w.key] = token
    for w, name in zip(numbered, looked.names, strict=True):
        exchange = name.partition(":")[0] if name else None
        if exchange is None:
            omitted[w.key] = errors.UNKNOWN_TOKEN
        elif not entitlements.allows(exchange):
            _not_entitled(w, exchange, omitted)
        else:
            token_of[w.key] = w.token
    ordered = {w.key: token_of[w.key] for w in wanted if w.key in token_of}  # as asked
    return ordered, looked.found


def _names(exchanges: list[str | None]) -> list[str | None]:
    """The registry's exchanges, as the names `Lookup.names` holds (only the exchange counts)."""
    return [f"{exchange}:" if exchange else None for exchange in exchanges]


def _not_entitled(wanted: Wanted, exchange: str, omitted: dict[str, str]) -> None:
    metrics.ENTITLEMENT_REFUSALS.labels(exchange=metric_label(exchange), event="quote").inc()
    omitted[wanted.key] = errors.NOT_ENTITLED


def _subscribe(missing: list[int], endpoint: str, stale: dict[int, tuple], ticks: dict[int, Cut],
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
