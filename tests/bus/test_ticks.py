"""Cutting ticks down to a client's mode, the batch format and its channels (pure logic)."""

from collections import Counter

from ticker.bus.keys import TICK_BUCKETS, bucket_of
from ticker.bus.ticks import decode_batch, encode, encode_all, highest, pack, project, unpack

FULL = {
    "tradable": True, "mode": "full", "instrument_token": 408065, "last_price": 1500.5, "seq": 3, "epoch": 9,
    "ingest_ts": 1, "last_traded_quantity": 5, "average_traded_price": 1499.1, "volume_traded": 100,
    "total_buy_quantity": 10, "total_sell_quantity": 12, "ohlc": {"open": 1, "high": 2, "low": 1, "close": 1},
    "change": 0.5,
    "last_trade_time": "2026-11-27T09:15:00+05:30", "oi": 0, "oi_day_high": 0, "oi_day_low": 0,
    "exchange_timestamp": "2026-11-27T09:15:00+05:30", "depth": {"buy": [], "sell": []},
}


def test_full_tick_cut_to_ltp_keeps_only_ltp_fields():
    assert project(FULL, "ltp") == {
        "tradable": True, "mode": "ltp", "instrument_token": 408065, "last_price": 1500.5, "seq": 3, "epoch": 9,
        "ingest_ts": 1}


def test_full_tick_cut_to_quote_has_no_depth_or_timestamps():
    quote = project(FULL, "quote")
    assert quote["mode"] == "quote" and quote["ohlc"] == FULL["ohlc"]
    assert "depth" not in quote and "exchange_timestamp" not in quote


def test_a_poorer_tick_is_never_passed_off_as_richer():
    assert project(project(FULL, "quote"), "full") is None


def test_index_quote_keeps_what_an_index_has():
    index = {"tradable": False, "mode": "quote", "instrument_token": 256265, "last_price": 24000.0,
             "ohlc": {"open": 1, "high": 2, "low": 1, "close": 1}, "change": 0.1, "seq": 1, "ingest_ts": 1}
    assert project(index, "quote") is index
    assert set(project(index, "ltp")) == {"tradable", "mode", "instrument_token", "last_price", "seq", "ingest_ts"}


def test_highest_mode():
    assert highest(["ltp", "full", "quote"]) == "full"
    assert highest(["ltp"]) == "ltp"


def test_a_batch_carries_each_tick_as_encoded_with_its_routing_row():
    ticks = [dict(FULL, seq=7), dict(project(FULL, "ltp"), instrument_token=256265, seq=2)]
    encoded = [encode(t) for t in ticks]
    batch = pack(ticks, encoded)

    assert unpack(batch) == [([408065, 7, 1, "full", 9], encoded[0]), ([256265, 2, 1, "ltp", 9], encoded[1])]
    assert unpack(batch.decode()) == unpack(batch)  # as a decoding Redis client hands it over
    assert decode_batch(batch) == ticks


def test_a_tick_with_newlines_in_its_text_still_stays_one_line():
    tick = dict(FULL, tradingsymbol="A\nB")
    assert decode_batch(pack([tick], [encode(tick)])) == [tick]


def test_an_exchanges_tokens_spread_over_the_buckets():
    # Kite tokens carry the segment in their low byte: NSE's all end in 0x01.
    nse = [(exchange_token << 8) | 1 for exchange_token in range(1000, 1640)]
    counts = Counter(bucket_of(token) for token in nse)
    assert len(counts) == TICK_BUCKETS and max(counts.values()) == len(nse) // TICK_BUCKETS


def test_encoding_a_list_at_once_gives_what_encoding_each_gives():
    quote = project(FULL, "quote")
    nested = {"tradable": True, "depth": [{"tradable": 1}, {"tradable": 2}]}  # cuts where no tick starts
    texts = {"tradable": True, "mode": ',{"tradable":'}  # inside a string the quotes are escaped
    for values in ([FULL, quote, FULL], [FULL], [], [nested, FULL], [texts, FULL], [FULL, {"mode": "ltp"}], [{}]):
        assert encode_all(values) == [encode(v) for v in values], values
