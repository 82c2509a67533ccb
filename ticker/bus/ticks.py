"""Tick modes, the one tick encoder and the batch format on Redis (pure logic, no I/O).

A shard publishes each tick in the richest mode it streams; each client receives it cut down to
the mode it asked for, never richer and never poorer.

A batch on a tick channel is one line of JSON rows `[token, seq, ingest_ts, mode, epoch]`, then the
encoded ticks one per line, in the same order (orjson never writes a raw newline). A replica
reads the rows and forwards the ticks' bytes as they are, so a tick is encoded once, by the
shard, however many clients receive it.
"""

from __future__ import annotations

from typing import Any

import orjson

MODES = ("ltp", "quote", "full")
MODE_RANK = {mode: rank for rank, mode in enumerate(MODES)}
DEFAULT_MODE = "quote"  # Kite's default for a new subscription

_STAMPS = ("seq", "epoch", "ingest_ts")
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


def encode_all(values: list[dict[str, Any]]) -> list[bytes]:
    """`[encode(v) for v in values]`, for a fraction of the cost: orjson's cost is mostly per
    call, so the list is encoded in one call and cut where each value starts. A value starts
    with `{"<first key>":`, which no JSON string can contain (its quotes would be escaped); if
    the values do not all share their first key, or a nested object cut the list wrongly (the
    count of pieces tells), each value is encoded on its own."""
    if not values:
        return []
    first = next(iter(values[0]), None)
    if first is not None and all(next(iter(value), None) == first for value in values):
        start = b"{" + orjson.dumps(first) + b":"
        pieces = orjson.dumps(values)[1:-1].split(b"," + start)
        if len(pieces) == len(values):
            return [pieces[0], *(start + piece for piece in pieces[1:])]
    return [orjson.dumps(value) for value in values]


def pack(ticks: list[dict[str, Any]], encoded: list[bytes]) -> bytes:
    """The batch carrying `ticks`, already encoded as `encoded`."""
    rows = [(t["instrument_token"], t["seq"], t["ingest_ts"], t["mode"], t["epoch"]) for t in ticks]
    return orjson.dumps(rows) + b"\n" + b"\n".join(encoded)


def unpack(batch: bytes | str) -> list[tuple[list, bytes]]:
    """`[([token, seq, ingest_ts, mode, epoch], encoded tick), ...]` of a batch, without decoding the ticks."""
    if isinstance(batch, str):
        batch = batch.encode()
    rows, _, body = batch.partition(b"\n")
    return list(zip(orjson.loads(rows), body.split(b"\n"), strict=True))


def decode_batch(batch: bytes | str) -> list[dict[str, Any]]:
    """Every tick of a batch, decoded (for readers off the hot path)."""
    return [orjson.loads(encoded) for _, encoded in unpack(batch)]


def encode(value: Any) -> bytes:
    """JSON as it crosses Redis and reaches clients: compact, and the same bytes for every
    consumer. orjson makes this several times cheaper than the json module, on the hot path of
    every shard."""
    return orjson.dumps(value)


def decode(text: str | bytes) -> Any:
    return orjson.loads(text)
