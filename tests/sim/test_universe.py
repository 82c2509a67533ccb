"""The simulator's instrument universe and the market state seeded from it (pure logic)."""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from datetime import date

import pytest
from kiteconnect import KiteConnect

from ticker.feed import protocol
from ticker.sim.market import Market
from ticker.sim.universe import (
    CSV_HEADER,
    SEGMENT_NUMBERS,
    generate_universe,
    monthly_code,
    strike_text,
    to_csv,
    weekly_code,
)

TRADING_DATE = date(2026, 11, 27)
SEGMENTS = {"NSE", "BSE", "INDICES", "NFO-FUT", "NFO-OPT", "BFO-FUT", "BFO-OPT", "MCX-FUT",
            "MCX-OPT", "CDS-FUT", "CDS-OPT", "BCD-FUT", "BCD-OPT"}


@pytest.fixture(scope="module")
def rows():
    return generate_universe(1, TRADING_DATE)


@pytest.fixture(scope="module")
def by_symbol(rows):
    return {(r.exchange, r.tradingsymbol): r for r in rows}


def test_same_seed_and_date_give_the_same_universe(rows):
    assert generate_universe(1, TRADING_DATE) == rows


def test_seed_and_date_change_the_universe_but_equity_tokens_stay(rows):
    assert generate_universe(2, TRADING_DATE) != rows
    next_day = generate_universe(1, date(2026, 11, 30))
    equities = {(r.exchange, r.tradingsymbol): r.instrument_token for r in rows if r.instrument_type == "EQ"}
    assert equities == {(r.exchange, r.tradingsymbol): r.instrument_token
                        for r in next_day if r.instrument_type == "EQ"}
    assert {r.instrument_token for r in rows if r.is_derivative} != {
        r.instrument_token for r in next_day if r.is_derivative}


def test_about_a_hundred_thousand_rows_in_every_segment(rows):
    assert 90_000 <= len(rows) <= 120_000
    counts = Counter(r.segment for r in rows)
    assert set(counts) == SEGMENTS
    assert counts["NFO-OPT"] > 50_000 and counts["NSE"] > 5_000 and counts["INDICES"] >= 50


def test_tokens_are_unique_and_carry_the_segment(rows):
    assert len({r.instrument_token for r in rows}) == len(rows)
    assert len({(r.exchange, r.tradingsymbol) for r in rows}) == len(rows)
    for r in rows:
        number = protocol.INDICES if r.segment == "INDICES" else SEGMENT_NUMBERS[r.exchange]
        assert r.instrument_token == r.exchange_token << 8 | number
        assert 0 < r.instrument_token <= 0xFFFFFFFF


def test_well_known_instruments_have_kites_tokens(by_symbol):
    assert by_symbol["NSE", "RELIANCE"].instrument_token == 738561
    assert by_symbol["NSE", "NIFTY 50"].instrument_token == 256265
    assert by_symbol["NSE", "NIFTY BANK"].instrument_token == 260105
    assert by_symbol["BSE", "SENSEX"].instrument_token == 265
    assert by_symbol["BSE", "RELIANCE"].exchange_token == 500325


def test_derivative_symbols_follow_kites_formats(rows, by_symbol):
    for r in rows:
        if r.instrument_type == "FUT":
            assert r.tradingsymbol == f"{r.name}{monthly_code(r.expiry)}FUT"
        elif r.instrument_type in ("CE", "PE"):
            monthly = r.tradingsymbol == f"{r.name}{monthly_code(r.expiry)}{strike_text(r.strike)}{r.instrument_type}"
            weekly = r.tradingsymbol == f"{r.name}{weekly_code(r.expiry)}{strike_text(r.strike)}{r.instrument_type}"
            assert monthly or weekly, r
    assert weekly_code(date(2024, 1, 25)) == "24125" and weekly_code(date(2024, 12, 5)) == "24D05"
    assert monthly_code(date(2024, 12, 26)) == "24DEC"
    assert re.fullmatch(r"NIFTY26D0126000CE", "NIFTY" + weekly_code(date(2026, 12, 1)) + "26000CE")
    assert ("NFO", "NIFTY26DEC26000CE") in by_symbol or any(
        r.tradingsymbol.startswith("NIFTY26DEC") for r in rows)
    assert any(re.fullmatch(r"USDINR26DEC\d+(\.\d+)?CE", r.tradingsymbol) for r in rows)
    assert any(re.fullmatch(r"CRUDEOIL\d\d[A-Z]{3}FUT", r.tradingsymbol) for r in rows)


def test_index_weeklies_and_stock_monthlies(rows):
    weekly_names = {r.name for r in rows if r.segment == "NFO-OPT"
                    and r.tradingsymbol[len(r.name):].startswith(weekly_code(r.expiry))}
    assert {"NIFTY", "BANKNIFTY", "FINNIFTY"} <= weekly_names
    assert "RELIANCE" not in weekly_names
    assert any(r.name == "RELIANCE" and r.segment == "NFO-OPT" for r in rows)
    assert any(r.name == "SENSEX" and r.segment == "BFO-OPT" for r in rows)


def test_expiries_strikes_lots_and_tick_sizes_are_sensible(rows):
    for r in rows:
        if r.is_derivative:
            assert r.expiry >= TRADING_DATE and r.lot_size > 0
        else:
            assert r.expiry is None and r.strike == 0
        if r.instrument_type in ("CE", "PE"):
            assert r.strike > 0
        assert r.last_price > 0
    ticks = {segment: {r.tick_size for r in rows if r.segment == segment} for segment in SEGMENTS}
    assert ticks["NSE"] == {0.05} and ticks["NFO-OPT"] == {0.05} and ticks["INDICES"] == {0.0}
    assert ticks["CDS-OPT"] == {0.0025} and ticks["BCD-OPT"] == {0.0025}
    assert ticks["MCX-FUT"] <= {1.0, 0.1, 0.05, 10.0}


def test_csv_has_kites_header_and_parses_with_kiteconnect(rows):
    text = to_csv(rows)
    assert text.splitlines()[0] == ",".join(CSV_HEADER) == (
        "instrument_token,exchange_token,tradingsymbol,name,last_price,expiry,strike,tick_size,"
        "lot_size,instrument_type,segment,exchange")
    parsed = KiteConnect("k")._parse_instruments(text.encode())  # the official client's parser
    assert len(parsed) == len(rows)
    first_option = next(i for i, r in enumerate(rows) if r.instrument_type == "CE")
    assert parsed[first_option]["expiry"] == rows[first_option].expiry
    assert parsed[first_option]["strike"] == rows[first_option].strike
    raw = next(csv.DictReader(io.StringIO(text)))
    assert raw["expiry"] == "" and raw["segment"] == "INDICES"


# -- the market state seeded from the universe --------------------------------------------------


def _sample(rows) -> list:
    """A few instruments of every segment."""
    picked: dict[str, list] = {}
    for r in rows:
        if len(picked.setdefault(r.segment, [])) < 3:
            picked[r.segment].append(r)
    return [r for group in picked.values() for r in group]


def _full_tick(market: Market, token: int) -> dict:
    return protocol.parse_frame(protocol.encode_frame([market.packet(token, protocol.MODE_FULL)]))[0]


def test_market_walk_keeps_kites_invariants(rows):
    instruments = {r.instrument_token: r for r in rows}
    market = Market(instruments, seed=1)
    sample = _sample(rows)
    for r in sample:
        market.ensure(r.instrument_token, 1_795_751_103.0)
    previous = {r.instrument_token: _full_tick(market, r.instrument_token) for r in sample}
    for step in range(200):
        market.step([r.instrument_token for r in sample], 1_795_751_104.0 + step)
        for r in sample:
            tick = _full_tick(market, r.instrument_token)
            _assert_plausible(r, tick, previous[r.instrument_token])
            previous[r.instrument_token] = tick
    assert len(market.sent(sample[0].instrument_token)) == 201


def _assert_plausible(instrument, tick: dict, before: dict) -> None:
    tick_size = instrument.tick_size or 0.05
    price, ohlc = tick["last_price"], tick["ohlc"]
    assert price > 0 and abs(round(price / tick_size) * tick_size - price) < 1e-6
    assert ohlc["high"] >= max(ohlc["open"], price) and ohlc["low"] <= min(ohlc["open"], price)
    assert tick["exchange_timestamp"] >= before["exchange_timestamp"]
    if instrument.segment == "INDICES":
        assert not tick["tradable"] and "volume_traded" not in tick
        return
    assert tick["volume_traded"] >= before["volume_traded"] > 0
    assert tick["last_trade_time"] >= before["last_trade_time"]
    assert ohlc["low"] <= tick["average_traded_price"] <= ohlc["high"]
    buy, sell = tick["depth"]["buy"], tick["depth"]["sell"]
    assert buy[0]["price"] < sell[0]["price"]
    assert all(abs(sell[i + 1]["price"] - sell[i]["price"] - tick_size) < 1e-6 for i in range(4))
    assert (tick["oi"] > 0) == instrument.is_derivative


def test_start_prices_are_seeded_by_token(rows):
    instruments = {r.instrument_token: r for r in rows}
    first, second, other_seed = Market(instruments, 1), Market(instruments, 1), Market(instruments, 2)
    for market in (first, second, other_seed):
        market.ensure(738561, 1_795_751_103.0)
    assert _full_tick(first, 738561) == _full_tick(second, 738561) != _full_tick(other_seed, 738561)
