"""Cutting ticks down to a client's mode (pure logic)."""

from ticker.bus.ticks import highest, project

FULL = {
    "tradable": True, "mode": "full", "instrument_token": 408065, "last_price": 1500.5, "seq": 3, "ingest_ts": 1,
    "last_traded_quantity": 5, "average_traded_price": 1499.1, "volume_traded": 100, "total_buy_quantity": 10,
    "total_sell_quantity": 12, "ohlc": {"open": 1, "high": 2, "low": 1, "close": 1}, "change": 0.5,
    "last_trade_time": "2026-11-27T09:15:00+05:30", "oi": 0, "oi_day_high": 0, "oi_day_low": 0,
    "exchange_timestamp": "2026-11-27T09:15:00+05:30", "depth": {"buy": [], "sell": []},
}


def test_full_tick_cut_to_ltp_keeps_only_ltp_fields():
    assert project(FULL, "ltp") == {
        "tradable": True, "mode": "ltp", "instrument_token": 408065, "last_price": 1500.5, "seq": 3, "ingest_ts": 1}


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
