"""Tick modes and the one tick encoder (pure logic, no I/O).

A shard publishes each tick in the richest mode it streams; each client receives it cut down to
the mode it asked for, never richer and never poorer.
"""

from __future__ import annotations

from typing import Any

import orjson

MODES = ("ltp", "quote", "full")
MODE_RANK = {mode: rank for rank, mode in enumerate(MODES)}
DEFAULT_MODE = "quote"  # Kite's default for a new subscription

_STAMPS = ("seq", "ingest_ts")
_LTP = ("tradable", "mode", "instrument_token", "last_price", *_STAMPS)
_QUOTE = (
    *_LTP,
    "last_traded_quantity",
    "average_traded_price",
    "volume_traded",
    "total_buy_quantity",
    "total_sell_quantity",
    "ohlc",
    "change",
)
_FULL = (*_QUOTE, "last_trade_time", "oi", "oi_day_high", "oi_day_low", "exchange_timestamp", "depth")
FIELDS = {"ltp": _LTP, "quote": _QUOTE, "full": _FULL}


def highest(modes: list[str]) -> str:
    """The richest of `modes`; upstream streams this and lower modes are cut from it."""
    return max(modes, key=MODE_RANK.__getitem__)


def project(tick: dict[str, Any], mode: str) -> dict[str, Any] | None:
    """`tick` as a client in `mode` sees it, or None when the tick is poorer than `mode`."""
    if MODE_RANK[tick["mode"]] < MODE_RANK[mode]:
        return None
    if tick["mode"] == mode:
        return tick
    projected = {key: tick[key] for key in FIELDS[mode] if key in tick}
    projected["mode"] = mode
    return projected


def encode(value: Any) -> str:
    """JSON as it crosses Redis: compact, and the same bytes for every consumer. orjson makes
    this several times cheaper than the json module, on the hot path of every shard."""
    return orjson.dumps(value).decode()


def decode(text: str | bytes) -> Any:
    return orjson.loads(text)
