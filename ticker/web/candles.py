"""Historical candles over HTTP, in the shape of Kite Connect's historical API
(https://kite.trade/docs/connect/v3/historical/), so `kiteconnect.KiteConnect.historical_data`
works against this service unchanged (authentication: ticker.web.kite_rest).

- `GET /instruments/historical/<instrument_token>/<interval>?from=&to=&continuous=&oi=`: Kite's
  own path and parameters.
- `GET /candles?instrument=NSE:INFY&interval=minute&from=&to=`: the same by name or token,
  always with `oi`.

`from` and `to` are IST as Kite takes them (`yyyy-mm-dd hh:mm:ss`, or a date alone: `from` its
start, `to` its end) or ISO 8601 with an offset. The answer is
`{"status": "success", "data": {"candles": [[time, open, high, low, close, volume(, oi)], ...]}}`
with `time` like `2026-11-30T09:15:00+0530`, oldest first: the completed candles from
PostgreSQL, today's from Redis (completed ones not yet written, and the forming one last).
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta

from flask import Blueprint, current_app, request

from ticker.bus.connection import redis_client
from ticker.candles import store
from ticker.candles.build import DAY_SECS, DEFAULT_INTERVAL, INTERVALS, IST_OFFSET_SECS, day_of, kite_time
from ticker.clock import IST
from ticker.db import engine_for, session_for
from ticker.registry.instruments import MAX_TOKEN, exchanges_of, tokens_by_symbol
from ticker.web import errors
from ticker.web.entitlements import entitlements_from
from ticker.web.errors import ClientError
from ticker.web.kite_rest import INPUT_EXCEPTION, PERMISSION_EXCEPTION, TOKEN_EXCEPTION, KiteError, kite_endpoint

bp = Blueprint("candles", __name__)

# The longest range one request may ask, per interval: Kite's own limits, and a day of seconds.
MAX_RANGE_DAYS = {"second": 1, "minute": 60, "5minute": 100, "15minute": 200, "60minute": 400}
UNKNOWN_INSTRUMENT = "unknown_instrument"


def _bad(message: str, code: str = errors.BAD_REQUEST) -> KiteError:
    return KiteError(400, INPUT_EXCEPTION, code, message)


def _moment(name: str, end_of_day: bool) -> datetime:
    raw = request.args.get(name, "").strip()
    if not raw:
        raise _bad(f"`{name}` is required (yyyy-mm-dd hh:mm:ss in IST, or a date)")
    try:
        if len(raw) == 10:
            day = date.fromisoformat(raw)
            return datetime.combine(day, time.max if end_of_day else time.min, IST)
        moment = datetime.fromisoformat(raw.replace(" ", "T", 1))
    except ValueError:
        raise _bad(f"invalid `{name}`: {raw[:40]!r} is not yyyy-mm-dd hh:mm:ss") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=IST)


def _flag(name: str) -> bool:
    raw = request.args.get(name, "0")
    if raw not in ("0", "1", "true", "false"):
        raise _bad(f"`{name}` must be 0 or 1")
    return raw in ("1", "true")


def _interval(raw: str) -> str:
    built = [name for name in INTERVALS if name in current_app.config["CANDLE_INTERVALS"]]
    if raw not in built:
        raise _bad(f"invalid interval {raw[:20]!r}: one of {', '.join(built)}")
    return raw


def _authorize(claims: dict, token: int) -> None:
    """KiteError unless the registry knows `token` and the JWT covers its exchange."""
    try:
        entitled = entitlements_from(claims, current_app.config["JWT_ENTITLEMENTS_CLAIM"])
    except ClientError as exc:
        raise KiteError(403, TOKEN_EXCEPTION, exc.code, exc.message) from exc
    with session_for(current_app.config["DATABASE_URL"]) as session:
        exchange = exchanges_of(session, [token]).get(token)
    if exchange is None:
        raise _bad(f"no instrument has the token {token} in today's registry", UNKNOWN_INSTRUMENT)
    if not entitled.allows(exchange):
        raise KiteError(403, PERMISSION_EXCEPTION, errors.NOT_ENTITLED,
                        f"your entitlements do not cover {exchange} data")


def candles(token: int, interval: str, start: datetime, end: datetime, with_oi: bool) -> list[list]:
    """Kite's candle rows of a series between `start` and `end` (inclusive), oldest first."""
    if end < start:
        raise _bad("`from` is after `to`")
    if end - start > timedelta(days=MAX_RANGE_DAYS[interval]):
        raise _bad(f"the range is too long for {interval} candles: at most {MAX_RANGE_DAYS[interval]} days")
    rows = {r[0]: r for r in store.read(engine_for(current_app.config["DATABASE_URL"]), token, interval, start, end)}
    low, high = start.timestamp(), end.timestamp()
    now = datetime.now(IST).timestamp()
    today_starts = day_of(int(now)) * DAY_SECS - IST_OFFSET_SECS  # 00:00 IST
    if low <= now and high >= today_starts:  # today's candles may not be in PostgreSQL yet: Redis has them
        for row in store.today(redis_client(current_app.config["REDIS_URL"]), token, interval, now):
            if low <= row[0] <= high:
                rows[row[0]] = row[:7]
    width = 7 if with_oi else 6
    return [[kite_time(r[0]), *r[1:width]] for _, r in sorted(rows.items())]


@bp.get("/instruments/historical/<token>/<interval>")
@kite_endpoint
def historical(claims: dict, token: str, interval: str) -> dict:
    """Kite's historical data endpoint (kiteconnect `historical_data`)."""
    if not token.isdigit() or not 0 < int(token) <= MAX_TOKEN:
        raise _bad(f"invalid instrument token {token[:20]!r}")
    interval = _interval(interval)
    if _flag("continuous"):
        raise _bad("continuous data is not available: candles are built from this service's live ticks")
    start, end = _moment("from", False), _moment("to", True)
    _authorize(claims, int(token))
    return {"candles": candles(int(token), interval, start, end, _flag("oi"))}


@bp.get("/candles")
@kite_endpoint
def by_instrument(claims: dict) -> dict:
    """Candles of `instrument` (`EXCHANGE:TRADINGSYMBOL` or a token), `interval` (default
    minute), `from`, `to`; rows always carry `oi`."""
    name = request.args.get("instrument", "").strip()
    if name.isdigit() and 0 < int(name) <= MAX_TOKEN:
        token = int(name)
    elif ":" in name and len(name) <= 64:
        with session_for(current_app.config["DATABASE_URL"]) as session:
            found = tokens_by_symbol(session, [name.upper()]).get(name.upper())
        if found is None:
            raise _bad(f"no instrument is named {name!r} in today's registry", UNKNOWN_INSTRUMENT)
        token = found
    else:
        raise _bad("`instrument` is required: EXCHANGE:TRADINGSYMBOL (NSE:INFY) or an instrument token")
    interval = _interval(request.args.get("interval", DEFAULT_INTERVAL))
    start, end = _moment("from", False), _moment("to", True)
    _authorize(claims, token)
    return {"candles": candles(token, interval, start, end, True)}
