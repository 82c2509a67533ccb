"""The Kite ticker codec, with `kiteconnect.KiteTicker._parse_binary` as the oracle."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kiteconnect import KiteTicker

from ticker.feed import protocol
from ticker.feed.protocol import (
    HEARTBEAT,
    MODE_FULL,
    MODE_LTP,
    MODE_QUOTE,
    ProtocolError,
    encode_frame,
    encode_packet,
    parse_frame,
    parse_text,
)

UINT32 = st.integers(0, 0xFFFFFFFF)
UINT16 = st.integers(0, 0xFFFF)
KNOWN_SEGMENTS = sorted(set(KiteTicker.EXCHANGE_MAP.values()))
# Kite's segments plus a few it doesn't name (they must parse with the default divisor).
SEGMENTS = st.sampled_from(KNOWN_SEGMENTS + [10, 11, 200])
MODES = st.sampled_from([MODE_LTP, MODE_QUOTE, MODE_FULL])
NOW = 1_795_751_103  # 2026-11-27T09:15:03+05:30


@pytest.fixture(scope="module")
def kite():
    return KiteTicker("k", "t")


def make_tick(token: int, last: int = 245_050, close: int = 244_000, **overrides) -> dict:
    """A plausible integer tick (prices in integer units)."""
    tick = {
        "instrument_token": token, "last_price": last, "last_traded_quantity": 25,
        "average_traded_price": last - 30, "volume_traded": 1_250_000,
        "total_buy_quantity": 50_000, "total_sell_quantity": 61_000, "open": close + 100,
        "high": last + 500, "low": close - 400, "close": close, "last_trade_time": NOW - 2,
        "oi": 0, "oi_day_high": 0, "oi_day_low": 0, "exchange_timestamp": NOW,
        "depth": {"buy": [(10 * i + 1, last - 5 * i, i + 1) for i in range(5)],
                  "sell": [(10 * i + 2, last + 5 * (i + 1), i + 2) for i in range(5)]},
    }
    tick.update(overrides)
    return tick


@st.composite
def ticks(draw) -> dict:
    """Any integer tick Kite could send: every field over its whole wire range."""
    token = draw(st.integers(0, 0xFFFFFF)) << 8 | draw(SEGMENTS)
    fields = {name: draw(UINT32) for name in (
        "last_price", "last_traded_quantity", "average_traded_price", "volume_traded",
        "total_buy_quantity", "total_sell_quantity", "open", "high", "low", "close",
        "last_trade_time", "oi", "oi_day_high", "oi_day_low", "exchange_timestamp")}
    level = st.tuples(UINT32, UINT32, UINT16)
    depth = {side: draw(st.lists(level, min_size=5, max_size=5)) for side in ("buy", "sell")}
    # The index packet's change field is a signed int32: keep last - close inside it.
    fields["close"] = draw(st.integers(max(0, fields["last_price"] - 2**31 + 1),
                                       min(0xFFFFFFFF, fields["last_price"] + 2**31)))
    return {"instrument_token": token, **fields, "depth": depth}


def assert_same_as_kite(ours: list[dict], kites: list[dict]) -> None:
    """Same ticks, keys (in order) and values; timestamps are the same instant."""
    assert len(ours) == len(kites)
    for our_tick, kite_tick in zip(ours, kites, strict=True):
        assert list(our_tick) == list(kite_tick)
        for key, expected in kite_tick.items():
            if isinstance(expected, datetime):  # KiteTicker: naive local time
                assert our_tick[key].endswith("+05:30")
                assert datetime.fromisoformat(our_tick[key]) == expected.astimezone()
            else:
                assert our_tick[key] == expected, key


# -- constants ---------------------------------------------------------------------------------


def test_segment_constants_match_kite_ticker():
    names = {"NSE", "NFO", "CDS", "BSE", "BFO", "BCD", "MCX", "MCXSX", "INDICES", "NCO"}
    assert {name: getattr(protocol, name) for name in names} == {
        name: KiteTicker.EXCHANGE_MAP[name.lower()] for name in names}


@pytest.mark.parametrize(("segment", "divisor"), [
    (protocol.NSE, 100.0), (protocol.NFO, 100.0), (protocol.CDS, 1e7), (protocol.BSE, 100.0),
    (protocol.BCD, 1e4), (protocol.MCX, 100.0), (protocol.INDICES, 100.0), (protocol.NCO, 1e4),
])
def test_price_divisor_per_segment(segment, divisor):
    assert protocol.price_divisor(segment) == divisor


def test_segment_of_is_the_low_byte():
    assert protocol.segment_of(738561) == protocol.NSE  # RELIANCE
    assert protocol.segment_of(256265) == protocol.INDICES  # NIFTY 50


@pytest.mark.parametrize(("token", "mode", "size"), [
    (738561, MODE_LTP, protocol.LTP_PACKET_SIZE),
    (738561, MODE_QUOTE, protocol.QUOTE_PACKET_SIZE),
    (738561, MODE_FULL, protocol.FULL_PACKET_SIZE),
    (256265, MODE_LTP, protocol.LTP_PACKET_SIZE),
    (256265, MODE_QUOTE, protocol.INDEX_QUOTE_PACKET_SIZE),
    (256265, MODE_FULL, protocol.INDEX_FULL_PACKET_SIZE),
])
def test_packet_sizes(token, mode, size):
    assert (protocol.LTP_PACKET_SIZE, protocol.INDEX_QUOTE_PACKET_SIZE, protocol.INDEX_FULL_PACKET_SIZE,
            protocol.QUOTE_PACKET_SIZE, protocol.FULL_PACKET_SIZE) == (8, 28, 32, 44, 184)
    assert len(encode_packet(make_tick(token), mode)) == size


# -- round trips against KiteTicker --------------------------------------------------------------


@pytest.mark.parametrize("segment", KNOWN_SEGMENTS)
@pytest.mark.parametrize("mode", [MODE_LTP, MODE_QUOTE, MODE_FULL])
def test_every_segment_and_mode_parses_like_kite_ticker(kite, segment, mode):
    token = 12345 << 8 | segment
    frame = encode_frame([encode_packet(make_tick(token), mode)])
    ours = parse_frame(frame)
    assert_same_as_kite(ours, kite._parse_binary(frame))
    assert ours[0]["mode"] == mode
    assert ours[0]["tradable"] is (segment != protocol.INDICES)


def test_cds_bcd_and_nco_prices_use_their_divisors():
    cds = parse_frame(encode_frame([encode_packet(make_tick(1 << 8 | protocol.CDS, 884_975_000), MODE_LTP)]))
    bcd = parse_frame(encode_frame([encode_packet(make_tick(1 << 8 | protocol.BCD, 884_975), MODE_LTP)]))
    nco = parse_frame(encode_frame([encode_packet(make_tick(1 << 8 | protocol.NCO, 884_975), MODE_LTP)]))
    assert [cds[0]["last_price"], bcd[0]["last_price"], nco[0]["last_price"]] == [88.4975] * 3


def test_full_tick_has_kite_shape_and_ist_timestamps():
    (tick,) = parse_frame(encode_frame([encode_packet(make_tick(738561), MODE_FULL)]))
    assert tick["last_price"] == 2450.5
    assert tick["ohlc"] == {"open": 2441.0, "high": 2455.5, "low": 2436.0, "close": 2440.0}
    assert tick["change"] == (2450.5 - 2440.0) * 100 / 2440.0
    assert tick["exchange_timestamp"] == "2026-11-27T09:15:03+05:30"
    assert tick["last_trade_time"] == "2026-11-27T09:15:01+05:30"
    assert tick["depth"]["buy"][0] == {"quantity": 1, "price": 2450.5, "orders": 1}
    assert tick["depth"]["sell"][4] == {"quantity": 42, "price": 2450.75, "orders": 6}
    json.dumps(tick)  # straight into JSON, no datetime objects


def test_zero_close_gives_zero_change_like_kite(kite):
    frame = encode_frame([encode_packet(make_tick(738561, close=0, low=0), MODE_QUOTE),
                          encode_packet(make_tick(256265, close=0, low=0), MODE_QUOTE)])
    ours = parse_frame(frame)
    assert [t["change"] for t in ours] == [0, 0]
    assert_same_as_kite(ours, kite._parse_binary(frame))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(ticks(), MODES), min_size=1, max_size=6))
def test_any_frame_round_trips_like_kite_ticker(packets):
    frame = encode_frame([encode_packet(tick, mode) for tick, mode in packets])
    assert_same_as_kite(parse_frame(frame), KiteTicker("k", "t")._parse_binary(frame))


# -- cutting a recorded packet down to a lower mode (the simulator's replay) --------------------


@settings(max_examples=200, deadline=None)
@given(ticks(), MODES, MODES)
def test_a_packet_cut_to_a_lower_mode_is_that_modes_packet(tick, recorded, wanted):
    """Kite's quote packet is the first 44 bytes of its full one, LTP the first 8 (index quote
    28 of full 32): cut, the packet is what Kite would send in that mode, and parses the same."""
    order = [MODE_LTP, MODE_QUOTE, MODE_FULL]
    cut = protocol.cut_packet(encode_packet(tick, recorded), wanted)
    lower = order[min(order.index(recorded), order.index(wanted))]
    assert cut == encode_packet(tick, lower)
    kite = KiteTicker("k", "t")._parse_binary(encode_frame([cut]))
    assert kite[0]["mode"] == lower and kite[0]["instrument_token"] == tick["instrument_token"]


def test_a_frame_splits_into_its_packets():
    packets = [encode_packet(make_tick(738561), MODE_FULL), bytes(range(50)), encode_packet(make_tick(256265), "ltp")]
    assert protocol.split_frame(encode_frame(packets)) == packets
    assert [protocol.packet_token(p) for p in packets[::2]] == [738561, 256265]
    assert protocol.split_frame(HEARTBEAT) == []
    assert protocol.cut_packet(packets[1], MODE_LTP) == packets[1]  # undocumented length: left whole
    with pytest.raises(ProtocolError):
        protocol.split_frame(encode_frame(packets)[:-1])


# -- heartbeats, garbage, unknown packets --------------------------------------------------------


def test_heartbeat_and_empty_frames_give_no_ticks(kite):
    assert HEARTBEAT == b"\x00"
    assert parse_frame(HEARTBEAT) == [] == kite._parse_binary(HEARTBEAT)
    assert parse_frame(b"") == []
    assert parse_frame(encode_frame([])) == []


def test_every_truncation_raises_protocol_error():
    frame = encode_frame([encode_packet(make_tick(738561), MODE_FULL),
                          encode_packet(make_tick(256265), MODE_QUOTE)])
    for length in range(2, len(frame)):
        with pytest.raises(ProtocolError):
            parse_frame(frame[:length])


def test_protocol_error_is_a_value_error_with_a_clear_message():
    frame = encode_frame([encode_packet(make_tick(738561), MODE_QUOTE)])
    with pytest.raises(ValueError, match="declares 44 bytes"):
        parse_frame(frame[:20])
    with pytest.raises(ProtocolError, match="ends before packet 2 of 2"):
        parse_frame(b"\x00\x02" + frame[2:])


def test_unknown_packet_lengths_are_skipped(kite):
    unknown = bytes(range(50))  # a packet type Kite might add one day
    frame = encode_frame([encode_packet(make_tick(738561), MODE_QUOTE), unknown,
                          encode_packet(make_tick(256265), MODE_LTP)])
    ours = parse_frame(frame)
    assert [t["instrument_token"] for t in ours] == [738561, 256265]
    assert_same_as_kite(ours, kite._parse_binary(frame))


def test_bytes_after_the_declared_packets_are_ignored():
    frame = encode_frame([encode_packet(make_tick(738561), MODE_LTP)])
    assert parse_frame(frame + b"\x01\x02\x03") == parse_frame(frame)


def test_parse_frame_accepts_memoryview_and_bytearray():
    frame = encode_frame([encode_packet(make_tick(738561), MODE_QUOTE)])
    assert parse_frame(memoryview(frame)) == parse_frame(bytearray(frame)) == parse_frame(frame)


# -- encoding edge cases -------------------------------------------------------------------------


def test_encode_rejects_unknown_mode_and_oversized_frames():
    with pytest.raises(ValueError, match="unknown mode"):
        encode_packet(make_tick(738561), "snapshot")
    with pytest.raises(ValueError, match="exceed"):
        encode_frame([b""] * (protocol.MAX_PACKETS_PER_FRAME + 1))


def test_encode_fills_missing_optional_fields_with_zero():
    tick = {"instrument_token": 738561, "last_price": 100, "open": 1, "high": 2, "low": 1, "close": 1}
    (parsed,) = parse_frame(encode_frame([encode_packet(tick, MODE_FULL)]))
    assert parsed["oi"] == parsed["volume_traded"] == 0
    assert parsed["depth"]["buy"][0] == {"quantity": 0, "price": 0.0, "orders": 0}


# -- text frames and timestamps ------------------------------------------------------------------


@pytest.mark.parametrize(("data", "expected"), [
    ('{"type": "error", "data": "Invalid token"}', {"type": "error", "data": "Invalid token"}),
    (b'{"type": "order", "data": {"order_id": "1"}}', {"type": "order", "data": {"order_id": "1"}}),
    ('{"type": "message", "data": "hello"}', {"type": "message", "data": "hello"}),
    ("not json", None),
    ("[1, 2]", None),
    (b"\xff\xfe", None),
    ("", None),
])
def test_parse_text(data, expected):
    assert parse_text(data) == expected


def test_ist_isoformat_and_its_bounded_cache():
    assert protocol.ist_isoformat(0) == "1970-01-01T05:30:00+05:30"
    assert protocol.ist_isoformat(NOW) == "2026-11-27T09:15:03+05:30"
    for epoch in range(NOW, NOW + 10_000):
        protocol.ist_isoformat(epoch)
    assert len(protocol._timestamp_cache) <= protocol._TIMESTAMP_CACHE_SIZE
