"""Kite Connect ticker wire protocol: packet encoding and a fast frame decoder. No I/O.

A binary frame is a 2-byte big-endian packet count, then for each packet a 2-byte length and
the packet. The packet length says what it is: LTP 8, index quote 28, index full 32, quote 44,
full 184 bytes. All numbers are unsigned big-endian integers; prices are divided by the
segment's divisor (`price_divisor`). A 1-byte frame is a heartbeat. Text frames are JSON
(errors and order updates).

`parse_frame` returns the same dicts as `kiteconnect.KiteTicker._parse_binary` (same keys,
same float divisions, same `change` formula), except that `last_trade_time` and
`exchange_timestamp` are ISO 8601 strings in IST (`2026-11-27T09:15:03+05:30`) rather than
naive local datetimes: they go straight into JSON, and they mean the same instant on every
machine. `tests/feed/test_protocol.py` checks this against `KiteTicker` as the oracle.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Callable
from typing import Any

# Segments: the low byte of an instrument token (`KiteTicker.EXCHANGE_MAP`).
NSE = 1
NFO = 2
CDS = 3
BSE = 4
BFO = 5
BCD = 6
MCX = 7
MCXSX = 8
INDICES = 9
NCO = 12

MODE_LTP = "ltp"
MODE_QUOTE = "quote"
MODE_FULL = "full"
MODES = (MODE_LTP, MODE_QUOTE, MODE_FULL)

LTP_PACKET_SIZE = 8
INDEX_QUOTE_PACKET_SIZE = 28
INDEX_FULL_PACKET_SIZE = 32
QUOTE_PACKET_SIZE = 44
FULL_PACKET_SIZE = 184
DEPTH_LEVELS = 5  # per side, 12 bytes each from byte 64 of a full packet

HEARTBEAT = b"\x00"  # Kite sends this 1-byte frame about once a second
MAX_PACKETS_PER_FRAME = 0xFFFF  # the count is a 2-byte field

IST_OFFSET_SECS = 19800  # +05:30; India has no daylight saving
_IST_FORMAT = "%Y-%m-%dT%H:%M:%S+05:30"
_TIMESTAMP_CACHE_SIZE = 4096  # ticks in one frame share a handful of seconds

# Price divisor per segment, indexed by `token & 0xff` (a tuple index beats a dict lookup).
_DIVISORS = tuple(
    1e7 if segment == CDS else 1e4 if segment in (BCD, NCO) else 100.0 for segment in range(256)
)

_U16 = struct.Struct(">H")
_LTP = struct.Struct(">II")
# The index packet's bytes 24-28 hold the price change, which KiteTicker ignores: so do we.
_INDEX_QUOTE_OUT = struct.Struct(">6Ii")
_INDEX_FULL_OUT = struct.Struct(">6IiI")
_INDEX_QUOTE_IN = struct.Struct(">6I4x")
_INDEX_FULL_IN = struct.Struct(">6I4xI")
_QUOTE = struct.Struct(">11I")
_DEPTH_ENTRY = "IIH2x"  # quantity, price, orders, padding
_FULL = struct.Struct(">16I" + _DEPTH_ENTRY * (2 * DEPTH_LEVELS))
_EMPTY_DEPTH_LEVEL = (0, 0, 0)


class ProtocolError(ValueError):
    """A binary frame is truncated or garbled (its declared packets overrun the data)."""


def segment_of(token: int) -> int:
    """The segment number of an instrument token (its low byte)."""
    return token & 0xFF


def price_divisor(segment: int) -> float:
    """What integer prices of this segment are divided by: CDS 1e7, BCD and NCO 1e4, else 100."""
    return _DIVISORS[segment & 0xFF]


def is_tradable(token: int) -> bool:
    """Indices (segment 9) are not tradable; everything else is."""
    return token & 0xFF != INDICES


_timestamp_cache: dict[int, str] = {}


def ist_isoformat(epoch: int) -> str:
    """`epoch` seconds as ISO 8601 in IST, e.g. `2026-11-27T09:15:03+05:30` (cached)."""
    text = _timestamp_cache.get(epoch)
    if text is None:
        if len(_timestamp_cache) >= _TIMESTAMP_CACHE_SIZE:
            _timestamp_cache.clear()
        text = time.strftime(_IST_FORMAT, time.gmtime(epoch + IST_OFFSET_SECS))
        _timestamp_cache[epoch] = text
    return text


# ---------------------------------------------------------------------------------------------
# Encoding (the simulator and tests use it; Kite itself is the encoder in production)


def encode_packet(tick: dict[str, Any], mode: str) -> bytes:
    """Encode one instrument's integer market state as a packet of the given mode.

    `tick` holds prices already in integer units (price * divisor) and epoch-second
    timestamps; fields a mode does not carry may be absent (oi and depth default to 0).
    Index tokens (segment 9) get the 28/32-byte index packets in quote/full mode.
    Raises ValueError for an unknown mode and struct.error for values outside uint32.
    """
    if mode == MODE_LTP:
        return _LTP.pack(tick["instrument_token"], tick["last_price"])
    if mode not in (MODE_QUOTE, MODE_FULL):
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    if tick["instrument_token"] & 0xFF == INDICES:
        return _encode_index(tick, mode)
    quote = _quote_fields(tick)
    if mode == MODE_QUOTE:
        return _QUOTE.pack(*quote)
    return _FULL.pack(*quote, *_full_extra_fields(tick), *_depth_fields(tick))


def _encode_index(tick: dict[str, Any], mode: str) -> bytes:
    last, close = tick["last_price"], tick["close"]
    fields = (tick["instrument_token"], last, tick["high"], tick["low"], tick["open"], close)
    if mode == MODE_QUOTE:
        return _INDEX_QUOTE_OUT.pack(*fields, last - close)
    return _INDEX_FULL_OUT.pack(*fields, last - close, tick.get("exchange_timestamp", 0))


def _quote_fields(tick: dict[str, Any]) -> tuple[int, ...]:
    return (
        tick["instrument_token"],
        tick["last_price"],
        tick.get("last_traded_quantity", 0),
        tick.get("average_traded_price", 0),
        tick.get("volume_traded", 0),
        tick.get("total_buy_quantity", 0),
        tick.get("total_sell_quantity", 0),
        tick["open"],
        tick["high"],
        tick["low"],
        tick["close"],
    )


def _full_extra_fields(tick: dict[str, Any]) -> tuple[int, ...]:
    return (
        tick.get("last_trade_time", 0),
        tick.get("oi", 0),
        tick.get("oi_day_high", 0),
        tick.get("oi_day_low", 0),
        tick.get("exchange_timestamp", 0),
    )


def _depth_fields(tick: dict[str, Any]) -> list[int]:
    depth = tick.get("depth") or {}
    fields: list[int] = []
    for side in ("buy", "sell"):
        levels = list(depth.get(side, ()))[:DEPTH_LEVELS]
        levels += [_EMPTY_DEPTH_LEVEL] * (DEPTH_LEVELS - len(levels))
        for quantity, price, orders in levels:
            fields += (quantity, price, orders)
    return fields


def encode_frame(packets: list[bytes]) -> bytes:
    """Join packets into one binary frame (2-byte count, then 2-byte length + packet each)."""
    if len(packets) > MAX_PACKETS_PER_FRAME:
        raise ValueError(f"{len(packets)} packets exceed one frame's {MAX_PACKETS_PER_FRAME}")
    parts = [_U16.pack(len(packets))]
    for packet in packets:
        parts.append(_U16.pack(len(packet)))
        parts.append(packet)
    return b"".join(parts)


def split_frame(data: bytes) -> list[bytes]:
    """The packets of a binary frame, as bytes (a heartbeat or empty frame has none). Raises
    ProtocolError if the declared packets overrun the frame."""
    if len(data) < 2:
        return []
    (count,) = _U16.unpack_from(data, 0)
    packets, offset = [], 2
    for index in range(count):
        if offset + 2 > len(data):
            raise ProtocolError(f"frame of {len(data)} bytes ends before packet {index + 1} of {count}")
        (length,) = _U16.unpack_from(data, offset)
        offset += 2 + length
        if offset > len(data):
            raise ProtocolError(f"packet {index + 1} of {count} overruns the frame of {len(data)} bytes")
        packets.append(data[offset - length:offset])
    return packets


# Each mode's packet is the first bytes of the next mode's (Kite's layout: a quote packet is a
# full one without its last-trade time, OI, exchange time and depth; an LTP packet is the first
# two fields of either). Per mode: (size for a tradable token, size for an index).
_MODE_SIZES = {MODE_LTP: (LTP_PACKET_SIZE, LTP_PACKET_SIZE),
               MODE_QUOTE: (QUOTE_PACKET_SIZE, INDEX_QUOTE_PACKET_SIZE),
               MODE_FULL: (FULL_PACKET_SIZE, INDEX_FULL_PACKET_SIZE)}


def cut_packet(packet: bytes, mode: str) -> bytes:
    """`packet` as Kite sends it in `mode` (a lower one than the packet's own: its first bytes);
    a packet already no larger than the mode's, or of a length Kite does not document, as it is."""
    if len(packet) not in _PACKET_PARSERS:
        return packet
    size = _MODE_SIZES[mode][segment_of(int.from_bytes(packet[:4], "big")) == INDICES]
    return packet[:size] if len(packet) > size else packet


def packet_token(packet: bytes) -> int:
    """The instrument token a packet is about (its first 4 bytes)."""
    return int.from_bytes(packet[:4], "big")


# ---------------------------------------------------------------------------------------------
# Decoding: the hot path of every shard worker, so one unpack_from per packet and no slicing.


def parse_frame(data: bytes | bytearray | memoryview) -> list[dict[str, Any]]:
    """Decode a binary frame into KiteTicker-shaped tick dicts (timestamps as IST ISO strings).

    A heartbeat (1 byte) or empty frame gives []. Packets of unknown length are skipped, since
    Kite may add packet types; bytes after the declared packets are ignored, as KiteTicker
    does. Raises ProtocolError if the declared packets overrun the frame.
    """
    return decode_frame(data)[0]


def decode_frame(data: bytes | bytearray | memoryview) -> tuple[list[dict[str, Any]], int]:
    """`parse_frame`'s ticks, and how many packets of unknown length it skipped."""
    size = len(data)
    if size < 2:
        return [], 0
    (count,) = _U16.unpack_from(data, 0)
    ticks = []
    skipped = 0
    offset = 2
    for index in range(count):
        if offset + 2 > size:
            raise ProtocolError(f"frame of {size} bytes ends before packet {index + 1} of {count}")
        (length,) = _U16.unpack_from(data, offset)
        start = offset + 2
        offset = start + length
        if offset > size:
            raise ProtocolError(
                f"packet {index + 1} of {count} declares {length} bytes but the frame "
                f"has {size - start} left"
            )
        parse = _PACKET_PARSERS.get(length)
        if parse is not None:
            ticks.append(parse(data, start))
        else:
            skipped += 1
    return ticks, skipped


def _parse_ltp(data: bytes, start: int) -> dict[str, Any]:
    token, last = _LTP.unpack_from(data, start)
    return {
        "tradable": token & 0xFF != INDICES,
        "mode": MODE_LTP,
        "instrument_token": token,
        "last_price": last / _DIVISORS[token & 0xFF],
    }


def _parse_index_quote(data: bytes, start: int) -> dict[str, Any]:
    return _index_tick(MODE_QUOTE, *_INDEX_QUOTE_IN.unpack_from(data, start))


def _parse_index_full(data: bytes, start: int) -> dict[str, Any]:
    *fields, timestamp = _INDEX_FULL_IN.unpack_from(data, start)
    tick = _index_tick(MODE_FULL, *fields)
    tick["exchange_timestamp"] = ist_isoformat(timestamp)
    return tick


def _index_tick(mode: str, token: int, last: int, high: int, low: int, open_: int, close: int):
    divisor = _DIVISORS[token & 0xFF]
    last_price = last / divisor
    close_price = close / divisor
    return {
        "tradable": token & 0xFF != INDICES,
        "mode": mode,
        "instrument_token": token,
        "last_price": last_price,
        # KiteTicker's key order for index packets (wire order: high, low, open, close).
        "ohlc": {"high": high / divisor, "low": low / divisor, "open": open_ / divisor,
                 "close": close_price},
        "change": (last_price - close_price) * 100 / close_price if close else 0,
    }


def _parse_quote(data: bytes, start: int) -> dict[str, Any]:
    return _quote_tick(MODE_QUOTE, _QUOTE.unpack_from(data, start))


def _parse_full(data: bytes, start: int) -> dict[str, Any]:
    values = _FULL.unpack_from(data, start)
    tick = _quote_tick(MODE_FULL, values)
    divisor = _DIVISORS[values[0] & 0xFF]
    tick["last_trade_time"] = ist_isoformat(values[11])
    tick["oi"] = values[12]
    tick["oi_day_high"] = values[13]
    tick["oi_day_low"] = values[14]
    tick["exchange_timestamp"] = ist_isoformat(values[15])
    tick["depth"] = {
        "buy": [{"quantity": values[i], "price": values[i + 1] / divisor, "orders": values[i + 2]}
                for i in range(16, 31, 3)],
        "sell": [{"quantity": values[i], "price": values[i + 1] / divisor, "orders": values[i + 2]}
                 for i in range(31, 46, 3)],
    }
    return tick


def _quote_tick(mode: str, values: tuple[int, ...]) -> dict[str, Any]:
    token, last, quantity, average, volume, buy_qty, sell_qty, open_, high, low, close = values[:11]
    divisor = _DIVISORS[token & 0xFF]
    last_price = last / divisor
    close_price = close / divisor
    return {
        "tradable": token & 0xFF != INDICES,
        "mode": mode,
        "instrument_token": token,
        "last_price": last_price,
        "last_traded_quantity": quantity,
        "average_traded_price": average / divisor,
        "volume_traded": volume,
        "total_buy_quantity": buy_qty,
        "total_sell_quantity": sell_qty,
        "ohlc": {"open": open_ / divisor, "high": high / divisor, "low": low / divisor,
                 "close": close_price},
        "change": (last_price - close_price) * 100 / close_price if close else 0,
    }


_PACKET_PARSERS: dict[int, Callable[[bytes, int], dict[str, Any]]] = {
    LTP_PACKET_SIZE: _parse_ltp,
    INDEX_QUOTE_PACKET_SIZE: _parse_index_quote,
    INDEX_FULL_PACKET_SIZE: _parse_index_full,
    QUOTE_PACKET_SIZE: _parse_quote,
    FULL_PACKET_SIZE: _parse_full,
}


def parse_text(data: str | bytes) -> dict[str, Any] | None:
    """Decode a text frame: `{"type": "error"|"order"|..., "data": ...}`, or None if not a JSON object."""
    try:
        message = json.loads(data)
    except (ValueError, TypeError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return message if isinstance(message, dict) else None
