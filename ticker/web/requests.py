"""Validation of client messages (pure logic, no I/O): every malformed input gets a clear
`ClientError`, nothing else escapes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ticker.bus.ticks import DEFAULT_MODE, MODES
from ticker.candles.build import INTERVALS
from ticker.web.errors import BAD_REQUEST, TOO_MANY_TOKENS, ClientError

MAX_TOKEN = 2**32 - 1  # Kite's instrument tokens are unsigned 32-bit integers
MAX_SYMBOL_LEN = 64


@dataclass
class Subscribe:
    tokens: list[int]
    instruments: list[str]
    mode: str
    candles: list[str]  # candle intervals (ticker.candles.build.INTERVALS) to stream live


def _candles(value: Any, built: Iterable[str]) -> list[str]:
    built = [name for name in INTERVALS if name in built]
    if value and not built:
        raise ClientError(BAD_REQUEST, "no candles are built by this service (CANDLE_INTERVALS is empty, or the "
                                       "tick bus is a Redis Cluster, which the candle builder does not read)")
    if not isinstance(value, list) or not all(isinstance(v, str) and v in built for v in value):
        raise ClientError(BAD_REQUEST, f"'candles' must be a list of intervals: {', '.join(built)}")
    return list(dict.fromkeys(value))


def _tokens(value: Any, limit: int) -> list[int]:
    if not isinstance(value, list):
        raise ClientError(BAD_REQUEST, "'tokens' must be a list of instrument tokens (integers)")
    if len(value) > limit:
        raise ClientError(TOO_MANY_TOKENS, f"at most {limit} tokens per request; got {len(value)}")
    for token in value:
        if isinstance(token, bool) or not isinstance(token, int) or not 0 < token <= MAX_TOKEN:
            raise ClientError(BAD_REQUEST, f"not an instrument token: {str(token)[:40]!r}")
    return list(dict.fromkeys(value))


def _instruments(value: Any, limit: int) -> list[str]:
    if not isinstance(value, list):
        raise ClientError(BAD_REQUEST, "'instruments' must be a list of \"EXCHANGE:TRADINGSYMBOL\" strings")
    if len(value) > limit:
        raise ClientError(TOO_MANY_TOKENS, f"at most {limit} instruments per request; got {len(value)}")
    for name in value:
        if not is_symbol(name):
            raise ClientError(BAD_REQUEST, f"not an \"EXCHANGE:TRADINGSYMBOL\" name: {str(name)[:40]!r}")
    return list(dict.fromkeys(name.upper() for name in value))


def is_symbol(name: Any) -> bool:
    """"EXCHANGE:TRADINGSYMBOL" as Kite spells instruments: printable ASCII (so upper-casing
    keeps it the name the client sent), a letters-only exchange, then a symbol after the first
    colon, which may hold colons of its own (a BSE index is "BSE:BSE SENSEX SIXTY 65:35"; Kite
    splits such names at the first colon too)."""
    if not isinstance(name, str) or len(name) > MAX_SYMBOL_LEN or not (name.isascii() and name.isprintable()):
        return False
    exchange, colon, symbol = name.partition(":")
    return bool(colon) and exchange.isalpha() and bool(symbol.strip())


def _payload(data: Any) -> dict:
    if not isinstance(data, dict):
        raise ClientError(BAD_REQUEST, "expected an object such as {\"tokens\": [256265]}")
    return data


def parse_subscribe(data: Any, limit: int, intervals: Iterable[str] = INTERVALS) -> Subscribe:
    """`{tokens: [int], instruments: ["NSE:INFY"], mode: "ltp"|"quote"|"full", candles: ["minute"]}`;
    `intervals`: the candle intervals the service builds (CANDLE_INTERVALS)."""
    data = _payload(data)
    if "tokens" not in data and "instruments" not in data:
        raise ClientError(BAD_REQUEST, "name what to subscribe to in 'tokens' or 'instruments'")
    mode = data.get("mode", DEFAULT_MODE)
    if mode not in MODES:
        raise ClientError(BAD_REQUEST, f"'mode' must be one of {', '.join(MODES)}")
    tokens = _tokens(data.get("tokens", []), limit)
    instruments = _instruments(data.get("instruments", []), limit - len(tokens))
    return Subscribe(tokens, instruments, mode, _candles(data.get("candles", []), intervals))


def parse_unsubscribe(data: Any, limit: int) -> list[int]:
    """`{tokens: [int]}`."""
    return _tokens(_payload(data).get("tokens"), limit)


def parse_reauth(data: Any) -> str:
    """`{token: "<jwt>"}`."""
    if not isinstance(data, dict):
        raise ClientError(BAD_REQUEST, "expected {\"token\": \"<a fresh JWT>\"}")
    token = data.get("token")
    if not isinstance(token, str) or not token:  # its size is verify()'s to judge
        raise ClientError(BAD_REQUEST, "expected {\"token\": \"<a fresh JWT>\"}")
    return token
