"""Kite Connect's market quotes made from ticks (pure logic, no I/O).

`GET /quote`, `/quote/ohlc` and `/quote/ltp` name instruments with repeated `i` parameters,
each "EXCHANGE:TRADINGSYMBOL" or an instrument token, and answer a map from each name, as
asked, to its quote (https://kite.trade/docs/connect/v3/market-quotes/). Here each quote is cut
from the last tick the service holds for the instrument (KiteTicker's field names,
ticker.bus.ticks), in the tick mode that carries every field of the endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

from ticker.bus.ticks import MODE_RANK, decode, encode
from ticker.web import errors
from ticker.web.errors import ClientError
from ticker.web.requests import MAX_TOKEN, is_symbol

ENDPOINTS = ("quote", "ohlc", "ltp")
# Kite's limits on instruments per request: 500 for a full quote, 1000 for OHLC and LTP.
MAX_INSTRUMENTS = {"quote": 500, "ohlc": 1000, "ltp": 1000}
# The longest request line a replica reads (its servers' default is 8 KiB): Kite's 1000
# instruments of up to 64 characters each, every character percent-encoded, as `&i=...`.
MAX_REQUEST_LINE_BYTES = 1000 * (3 + 64 * 3) + 1024
# The poorest tick mode that carries every field an endpoint answers (depth, oi and the
# timestamps come only in `full`; OHLC from `quote`).
TICK_MODE = {"quote": "full", "ohlc": "quote", "ltp": "ltp"}


@dataclass(frozen=True)
class Wanted:
    """One instrument of a request: `key` as the client wrote it (the response's key), and
    either its `symbol` ("EXCHANGE:TRADINGSYMBOL", upper-cased as the registry holds it) or
    its `token`."""

    key: str
    symbol: str | None = None
    token: int | None = None


def parse_instruments(values: list[str], endpoint: str) -> list[Wanted]:
    """The distinct instruments of the `i` parameters, in order. ClientError `bad_request` for
    none or a malformed one (not "EXCHANGE:TRADINGSYMBOL" as the Socket.IO protocol spells it,
    nor an instrument token, a positive 32-bit integer in decimal), `too_many_tokens` beyond
    Kite's limit for `endpoint`."""
    if not values:
        raise ClientError(errors.BAD_REQUEST, "name instruments as ?i=EXCHANGE:TRADINGSYMBOL or ?i=<instrument_token>")
    limit = MAX_INSTRUMENTS[endpoint]
    if len(values) > limit:
        raise ClientError(errors.TOO_MANY_TOKENS, f"at most {limit} instruments per request; got {len(values)}")
    return [_wanted(value) for value in dict.fromkeys(values)]


def instrument_values(query_string: str) -> list[str] | None:
    """The `i` values of a query string made of `i=` pairs alone (what KiteConnect sends),
    decoded as werkzeug's `request.args.getlist("i")` would, in one `unquote_plus` call rather
    than one per value (for 50 instruments that was a fifth of a quote's CPU); None for any
    other query string (another parameter, an encoded newline, which the one call could not
    tell from a separator, or escapes that are not UTF-8): then ask werkzeug."""
    if not query_string.startswith("i=") or "\n" in query_string or "%0a" in query_string.lower():
        return None
    joined = query_string[2:].replace("&i=", "\n")
    if "&" in joined:
        return None
    decoded = unquote_plus(joined)
    return None if "\ufffd" in decoded else decoded.split("\n")  # werkzeug keeps invalid UTF-8 escaped


def _wanted(value: str) -> Wanted:
    if value.isascii() and value.isdigit() and len(value) <= 10 and 0 < int(value) <= MAX_TOKEN:
        return Wanted(value, token=int(value))
    if is_symbol(value):
        return Wanted(value, symbol=value.upper())
    raise ClientError(errors.BAD_REQUEST, f"not an instrument (EXCHANGE:TRADINGSYMBOL or a token): {value[:40]!r}")


def answers(mode: str | None, endpoint: str) -> bool:
    """Whether a tick (or a stream) in `mode` carries every field `endpoint` answers."""
    return MODE_RANK.get(mode, -1) >= MODE_RANK[TICK_MODE[endpoint]]


def kite_time(iso: str | None) -> str | None:
    """A tick's ISO 8601 IST time as Kite's REST API writes times: "YYYY-MM-DD HH:MM:SS" in
    IST without an offset (kiteconnect parses exactly that into a datetime)."""
    return iso[:19].replace("T", " ") if iso else None


def shape(tick: dict[str, Any], endpoint: str) -> dict[str, Any]:
    """The quote of `endpoint` cut from `tick` (whose mode `answers` it). Fields the tick lacks
    (an index has no volume or depth) are 0, or null for times; circuit limits are null: Kite's
    ticker does not carry them."""
    ltp = {"instrument_token": tick["instrument_token"], "last_price": tick["last_price"]}
    if endpoint == "ltp":
        return ltp
    ohlc = tick.get("ohlc") or {"open": 0, "high": 0, "low": 0, "close": 0}
    if endpoint == "ohlc":
        return {**ltp, "ohlc": ohlc}
    close = ohlc.get("close") or 0
    return {
        "instrument_token": tick["instrument_token"],
        "timestamp": kite_time(tick.get("exchange_timestamp")),
        "last_trade_time": kite_time(tick.get("last_trade_time")),
        "last_price": tick["last_price"],
        "last_quantity": tick.get("last_traded_quantity", 0),
        "buy_quantity": tick.get("total_buy_quantity", 0),
        "sell_quantity": tick.get("total_sell_quantity", 0),
        "volume": tick.get("volume_traded", 0),
        "average_price": tick.get("average_traded_price", 0),
        "oi": tick.get("oi", 0),
        "oi_day_high": tick.get("oi_day_high", 0),
        "oi_day_low": tick.get("oi_day_low", 0),
        # Kite: the absolute change from the previous close; 0 without a close to measure from.
        "net_change": round(tick["last_price"] - close, 8) if close else 0,
        "lower_circuit_limit": None,
        "upper_circuit_limit": None,
        "ohlc": ohlc,
        "depth": _depth(tick.get("depth")),
    }


def _depth(depth: dict[str, Any] | None) -> dict[str, list]:
    if not depth:
        return {"buy": [], "sell": []}
    return {side: [{"price": level["price"], "quantity": level["quantity"], "orders": level["orders"]}
                   for level in depth.get(side, ())] for side in ("buy", "sell")}


@dataclass
class Cut:
    """One tick as quotes use it: its `mode`, its `position` (epoch, seq) in its token's
    sequence, and the JSON of each endpoint's quote cut from it (made when first asked)."""

    raw: str
    mode: str
    position: tuple
    quotes: dict[str, bytes] = field(default_factory=dict)

    def quote(self, endpoint: str) -> bytes:
        """The JSON of `endpoint`'s quote (see `shape`)."""
        encoded = self.quotes.get(endpoint)
        if encoded is None:
            encoded = self.quotes[endpoint] = encode(shape(decode(self.raw), endpoint))
        return encoded


class Cuts:
    """Ticks cut into quotes once, however many requests ask for them: a tick stays the last
    one of its token for about a second, and a busy replica quotes it many times meanwhile.
    Keyed by the tick's JSON as Redis holds it (a new tick is a new key); at most `size`
    entries, dropped all at once when full (a superseded tick is never asked for again)."""

    def __init__(self, size: int = 10_000):
        self.size = size
        self.cuts: dict[str, Cut] = {}

    def get(self, raw: str) -> Cut:
        cut = self.cuts.get(raw)
        if cut is None:
            if len(self.cuts) >= self.size:
                self.cuts.clear()
            tick = decode(raw)
            cut = self.cuts[raw] = Cut(raw, tick["mode"], (tick.get("epoch"), tick.get("seq")))
        return cut


def envelope(quotes: list[tuple[str, bytes]], extra: dict[str, Any]) -> bytes:
    """Kite's success envelope, `{"status": "success", "data": {key: quote, ...}, **extra}`,
    joined from quotes already encoded."""
    data = b",".join(encode(key) + b":" + quote for key, quote in quotes)
    return b'{"status":"success","data":{' + data + b"}," + encode(extra)[1:]
