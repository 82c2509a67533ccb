"""Kite's quote shapes cut from ticks, and the parsing of `i` (ticker.web.kite_quotes): pure logic."""

from __future__ import annotations

import pytest
from werkzeug.test import EnvironBuilder

from ticker.web.errors import ClientError
from ticker.web.kite_quotes import Wanted, answers, instrument_values, parse_instruments, shape

FULL_TICK = {
    "tradable": True, "mode": "full", "instrument_token": 408065, "last_price": 1502.35,
    "last_traded_quantity": 12, "average_traded_price": 1499.8, "volume_traded": 183422,
    "total_buy_quantity": 50211, "total_sell_quantity": 48820,
    "ohlc": {"open": 1490.0, "high": 1505.5, "low": 1488.1, "close": 1495.0}, "change": 0.49,
    "last_trade_time": "2026-11-27T09:15:01+05:30", "oi": 0, "oi_day_high": 0, "oi_day_low": 0,
    "exchange_timestamp": "2026-11-27T09:15:03+05:30",
    "depth": {"buy": [{"quantity": 5, "price": 1502.3, "orders": 2}] * 5,
              "sell": [{"quantity": 7, "price": 1502.4, "orders": 1}] * 5},
    "seq": 9, "epoch": 1, "ingest_ts": 1795666503123,
}


def test_a_full_quote_has_kites_fields_and_times():
    quote = shape(FULL_TICK, "quote")
    assert quote == {
        "instrument_token": 408065, "timestamp": "2026-11-27 09:15:03", "last_trade_time": "2026-11-27 09:15:01",
        "last_price": 1502.35, "last_quantity": 12, "buy_quantity": 50211, "sell_quantity": 48820,
        "volume": 183422, "average_price": 1499.8, "oi": 0, "oi_day_high": 0, "oi_day_low": 0,
        "net_change": 7.35, "lower_circuit_limit": None, "upper_circuit_limit": None,
        "ohlc": FULL_TICK["ohlc"], "depth": {"buy": [{"price": 1502.3, "quantity": 5, "orders": 2}] * 5,
                                             "sell": [{"price": 1502.4, "quantity": 7, "orders": 1}] * 5},
    }


def test_ltp_and_ohlc_are_cut_down():
    assert shape(FULL_TICK, "ltp") == {"instrument_token": 408065, "last_price": 1502.35}
    assert shape(FULL_TICK, "ohlc") == {"instrument_token": 408065, "last_price": 1502.35, "ohlc": FULL_TICK["ohlc"]}


def test_an_index_tick_fills_what_it_lacks_with_zeros():
    index = {"tradable": False, "mode": "full", "instrument_token": 256265, "last_price": 24000.5,
             "ohlc": {"open": 1, "high": 2, "low": 0.5, "close": 0}, "change": 0}
    quote = shape(index, "quote")
    assert quote["volume"] == 0 and quote["net_change"] == 0 and quote["last_trade_time"] is None
    assert quote["depth"] == {"buy": [], "sell": []}


def test_a_tick_answers_only_endpoints_its_mode_carries():
    assert answers("quote", "ohlc") and answers("quote", "ltp") and not answers("quote", "quote")
    assert not answers(None, "ltp")  # not streamed at all


def test_instruments_by_name_or_token_deduplicated_in_order():
    assert parse_instruments(["nse:infy", "408065", "nse:infy", "BSE:BSE SENSEX SIXTY 65:35"], "quote") == [
        Wanted("nse:infy", symbol="NSE:INFY"), Wanted("408065", token=408065),
        Wanted("BSE:BSE SENSEX SIXTY 65:35", symbol="BSE:BSE SENSEX SIXTY 65:35")]


@pytest.mark.parametrize("bad", ["INFY", "0", "4294967296", "N1:INFY", "NSE:", "NSE:INFY\n", "-5", "١٢٣"])
def test_malformed_instruments_are_bad_requests(bad):
    with pytest.raises(ClientError) as refused:
        parse_instruments([bad], "ltp")
    assert refused.value.code == "bad_request"


@pytest.mark.parametrize(("endpoint", "limit"), [("quote", 500), ("ohlc", 1000), ("ltp", 1000)])
def test_kites_limits_per_endpoint(endpoint, limit):
    assert len(parse_instruments([str(n) for n in range(1, limit + 1)], endpoint)) == limit
    with pytest.raises(ClientError) as refused:
        parse_instruments([str(n) for n in range(1, limit + 2)], endpoint)
    assert refused.value.code == "too_many_tokens"
    with pytest.raises(ClientError):
        parse_instruments([], endpoint)


@pytest.mark.parametrize("query", [
    "i=NSE%3AINFY", "i=NSE%3AINFY&i=408065&i=nse:infy", "i=BSE%3ABSE+SENSEX+SIXTY+65%3A35", "i=NSE%3AM%26M",
    "i=NSE%3AM%26M&i=", "i=", "i=a=b&i=c", "i=NSE%3AA%2Bi%3D",
])
def test_instrument_values_decode_as_werkzeug_does(query):
    werkzeug = EnvironBuilder(query_string=query).get_request().args.getlist("i")
    assert instrument_values(query) == werkzeug


@pytest.mark.parametrize("query", ["", "x=1&i=NSE%3AINFY", "i=NSE%3AINFY&x=1", "i=NSE%3AA%0AB", "i=NSE%3AA%0aB",
                                   "ii=NSE%3AINFY", "i=%FF%FE"])
def test_other_query_strings_are_left_to_werkzeug(query):
    assert instrument_values(query) is None
