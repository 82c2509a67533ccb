"""The candle fold's documented rules, one at a time (pure logic: docs/API.md, "Candles")."""

from datetime import datetime

import pytest

from ticker.candles.build import CandleBuilder, bucket_start, kite_time, tick_time
from ticker.clock import IST

TOKEN = 408065


def at(hhmmss: str, day: int = 30) -> int:
    return int(datetime.fromisoformat(f"2026-11-{day:02d}T{hhmmss}+05:30").timestamp())


def tick(ts: int, price: float, volume: int | None = None, oi: int | None = None, token: int = TOKEN) -> dict:
    out = {"instrument_token": token, "last_price": price,
           "exchange_timestamp": datetime.fromtimestamp(ts, IST).isoformat()}
    if volume is not None:
        out["volume_traded"] = volume
    if oi is not None:
        out["oi"] = oi
    return out


def feed(builder: CandleBuilder, ticks: list[dict], lag: float = 0.1) -> None:
    for t in ticks:
        now = tick_time(t, 0) + lag
        builder.close_due(now)
        builder.add(t, now)


def closed(builder: CandleBuilder, name: str = "minute") -> list[list]:
    return [c.values for c in builder.take_updates()[1] if c.interval == name]


def test_buckets_align_to_the_open_in_ist():
    assert kite_time(bucket_start(at("10:14:59"), 3600)) == "2026-11-30T09:15:00+0530"
    assert kite_time(bucket_start(at("10:15:00"), 3600)) == "2026-11-30T10:15:00+0530"
    assert kite_time(bucket_start(at("09:29:59"), 300)) == "2026-11-30T09:25:00+0530"
    assert kite_time(bucket_start(at("09:15:07"), 1)) == "2026-11-30T09:15:07+0530"


def test_ohlcv_from_volume_growth_and_the_first_tick_at_the_open_counts_whole():
    b = CandleBuilder(["minute"])
    feed(b, [tick(at("09:15:01"), 100.0, 5000), tick(at("09:15:20"), 101.5, 5010),
             tick(at("09:15:40"), 99.0, 5030), tick(at("09:15:59"), 100.5, 5031),
             tick(at("09:16:02"), 100.0, 5040)])
    assert closed(b) == [[at("09:15:00"), 100.0, 101.5, 99.0, 100.5, 5031, 0]]
    assert b.forming(TOKEN, "minute").values == [at("09:16:00"), 100.0, 100.0, 100.0, 100.0, 9, 0]


def test_a_mid_session_first_tick_is_only_the_baseline():
    b = CandleBuilder(["minute"])
    feed(b, [tick(at("11:00:05"), 100.0, 90_000), tick(at("11:00:30"), 101.0, 90_100)])
    assert b.forming(TOKEN, "minute").values == [at("11:00:00"), 101.0, 101.0, 101.0, 101.0, 100, 0]


def test_no_candle_for_a_minute_without_a_trade_but_oi_moves_the_forming_one():
    b = CandleBuilder(["minute"])
    feed(b, [tick(at("09:15:01"), 100.0, 10, oi=500), tick(at("09:15:30"), 100.0, 10, oi=520),
             tick(at("09:16:10"), 100.0, 10, oi=530),  # no trade in 09:16: no candle
             tick(at("09:17:10"), 102.0, 12, oi=540)])
    b.close_due(at("09:18:10"))
    assert closed(b) == [[at("09:15:00"), 100.0, 100.0, 100.0, 100.0, 10, 520],
                         [at("09:17:00"), 102.0, 102.0, 102.0, 102.0, 2, 540]]


def test_a_late_tick_is_dropped_and_counted_and_its_trade_lands_in_the_later_volume():
    b = CandleBuilder(["minute"])
    feed(b, [tick(at("09:15:01"), 100.0, 10), tick(at("09:15:50"), 101.0, 30),
             tick(at("09:15:40"), 250.0, 20),  # older than the latest: dropped
             tick(at("09:15:50"), 250.0, 25),  # same second, lower volume: out of order, dropped
             tick(at("09:16:01"), 102.0, 40)])
    assert b.late_ticks == 2
    assert closed(b) == [[at("09:15:00"), 100.0, 101.0, 100.0, 101.0, 30, 0]]


def test_a_tick_past_its_buckets_grace_is_dropped_even_with_no_later_tick():
    b = CandleBuilder(["minute"], grace_secs=3)
    feed(b, [tick(at("09:15:01"), 100.0, 10)])
    b.close_due(at("09:16:03"))
    assert closed(b) == [[at("09:15:00"), 100.0, 100.0, 100.0, 100.0, 10, 0]]
    b.add(tick(at("09:15:59"), 90.0, 15), now=at("09:16:04"))
    assert b.late_ticks == 1 and b.forming(TOKEN, "minute") is None
    feed(b, [tick(at("09:16:30"), 101.0, 20)])
    assert b.forming(TOKEN, "minute").volume == 10  # the dropped tick's 5 are counted here


def test_a_volume_reset_becomes_the_baseline():
    b = CandleBuilder(["minute"])
    feed(b, [tick(at("09:15:01"), 100.0, 1000), tick(at("09:15:10"), 100.5, 1100),
             tick(at("09:15:20"), 99.0, 3),  # the counter restarted: no volume, no price
             tick(at("09:15:30"), 101.0, 8)])
    assert b.volume_resets == 1
    assert b.forming(TOKEN, "minute").values == [at("09:15:00"), 100.0, 101.0, 100.0, 101.0, 1105, 0]


def test_a_feed_gap_puts_the_gaps_volume_in_the_first_candle_after_it():
    b = CandleBuilder(["minute"])
    feed(b, [tick(at("09:15:01"), 100.0, 10), tick(at("09:21:30"), 104.0, 900)])
    b.close_due(at("09:23:00"))
    assert closed(b) == [[at("09:15:00"), 100.0, 100.0, 100.0, 100.0, 10, 0],
                         [at("09:21:00"), 104.0, 104.0, 104.0, 104.0, 890, 0]]


def test_the_wall_clock_closes_a_quiet_candle_after_the_grace():
    b = CandleBuilder(["minute"], grace_secs=2)
    feed(b, [tick(at("09:15:01"), 100.0, 10)])
    b.close_due(at("09:16:01") + 0.9)
    assert closed(b) == []
    b.close_due(at("09:16:02"))
    assert closed(b) == [[at("09:15:00"), 100.0, 100.0, 100.0, 100.0, 10, 0]]


def test_the_day_rolls_over():
    b = CandleBuilder(["60minute"])
    feed(b, [tick(at("15:14:00", 27), 99.0, 4000), tick(at("15:29:50", 27), 100.0, 5000),
             tick(at("09:15:02", 30), 98.0, 40)])  # a new day's volume counts from zero again
    assert closed(b, "60minute")[-1] == [at("15:15:00", 27), 100.0, 100.0, 100.0, 100.0, 1000, 0]
    assert b.forming(TOKEN, "60minute").values == [at("09:15:00", 30), 98.0, 98.0, 98.0, 98.0, 40, 0]


def test_ticks_without_volume_count_each_with_volume_zero_and_quote_ticks_use_ingest_time():
    b = CandleBuilder(["minute"])
    b.add({"instrument_token": 256265, "last_price": 26150.5, "ingest_ts": at("09:20:10") * 1000}, at("09:20:10"))
    b.add({"instrument_token": 256265, "last_price": 26149.0, "ingest_ts": at("09:20:20") * 1000}, at("09:20:20"))
    assert b.forming(256265, "minute").values == [at("09:20:00"), 26150.5, 26150.5, 26149.0, 26149.0, 0, 0]


def test_each_forming_candle_is_reported_once_per_take_with_its_latest_state():
    b = CandleBuilder(["minute", "second"])
    feed(b, [tick(at("09:15:01"), 100.0, 10), tick(at("09:15:01"), 101.0, 11), tick(at("09:15:02"), 102.0, 12)])
    forming, done = b.take_updates()
    assert sorted((c.interval, c.close, c.closed) for c in forming) == [
        ("minute", 102.0, False), ("second", 102.0, False)]
    assert [(c.interval, c.close, c.closed) for c in done] == [("second", 101.0, True)]
    assert b.take_updates() == ([], [])


@pytest.mark.parametrize("cut", [1, 2, 3, 4])
def test_a_restart_mid_minute_resumes_from_the_stored_state(cut):
    ticks = [tick(at("09:15:01"), 100.0, 10, oi=7), tick(at("09:15:20"), 103.0, 14, oi=8),
             tick(at("09:15:40"), 98.0, 20, oi=9), tick(at("09:15:50"), 99.0, 21, oi=9),
             tick(at("09:16:10"), 100.0, 30, oi=9)]
    whole = CandleBuilder()
    feed(whole, ticks)
    first = CandleBuilder()
    feed(first, ticks[:cut])
    closed_before = first.take_updates()[1]
    second = CandleBuilder()
    second.restore(TOKEN, first.state(TOKEN))
    feed(second, ticks[cut:])
    expect = [(c.interval, c.values) for c in whole.take_updates()[1]]
    assert [(c.interval, c.values) for c in closed_before + second.take_updates()[1]] == expect
    assert second.forming(TOKEN, "minute").values == whole.forming(TOKEN, "minute").values
