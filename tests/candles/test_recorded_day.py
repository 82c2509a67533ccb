"""A recorded trading day, read as a shard reads it, gives exactly the candles the documented
rules give when computed by a plain fold written separately here (docs/API.md, "Candles").

The day comes from the simulator's market (`ticker.sim.day`): full-mode frames with late and
replayed packets, a feed gap, a volume reset, an illiquid instrument and one that starts
streaming mid-session. It is shortened to 50 minutes to keep the test quick.
"""

from collections import defaultdict
from datetime import date, datetime, time, timedelta

import pytest

from ticker.candles.build import INTERVALS, CandleBuilder
from ticker.clock import IST
from ticker.feed.protocol import parse_frame
from ticker.feed.recording import read_day
from ticker.sim.day import DayPlan, instruments_by_symbol, make_day

DAY = date(2026, 11, 30)
GRACE = 3.0
SYMBOLS = ["NSE:INFY", "NSE:RELIANCE", "NFO:NIFTY26DECFUT", "NSE:NIFTY 50", "BSE:INFY", "NSE:TCS"]


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    found = instruments_by_symbol(7, DAY, SYMBOLS)
    plan = DayPlan(DAY, found[:4], illiquid=found[4], late_starter=found[5], end=time(10, 5))
    directory = tmp_path_factory.mktemp("recordings")
    report = make_day(directory, plan)
    stream = [(frame.received, tick) for frame in read_day(directory, DAY.isoformat())
              for tick in parse_frame(frame.data)]
    return report, stream, build(stream)


def build(stream):
    builder = CandleBuilder(INTERVALS, grace_secs=GRACE)
    closed = []
    for received, tick in stream:
        builder.close_due(received)
        builder.add(tick, received)
        closed += builder.take_updates()[1]
    builder.close_due(float("inf"))
    closed += builder.take_updates()[1]
    return builder, closed


def reference(stream, interval: str, secs: int) -> dict[tuple[int, int], list]:
    """The rules as a plain fold over datetimes: filter, then group each bucket's events."""
    last = defaultdict(lambda: datetime.min.replace(tzinfo=IST))
    baseline: dict[int, int] = {}
    seen_day: dict[int, date] = {}
    events = defaultdict(list)  # (token, bucket start) -> [(is_trade, price, quantity, oi)]
    for received, tick in stream:
        token = tick["instrument_token"]
        when = datetime.fromisoformat(tick["exchange_timestamp"])
        open_ = when.replace(hour=9, minute=15, second=0)
        start = open_ + timedelta(seconds=((when - open_).total_seconds() // secs) * secs)
        volume = tick.get("volume_traded")
        if (when < last[token] or (when == last[token] and volume is not None and volume < baseline[token])
                or (start + timedelta(seconds=secs)).timestamp() + GRACE <= received):
            continue
        if seen_day.get(token) != when.date():
            seen_day[token] = when.date()
            baseline[token] = 0 if volume is None or when < open_ + timedelta(minutes=1) else volume
        last[token] = when
        if volume is None:
            events[(token, start)].append((True, tick["last_price"], 0, tick.get("oi")))
        elif volume > baseline[token]:
            events[(token, start)].append((True, tick["last_price"], volume - baseline[token], tick["oi"]))
            baseline[token] = volume
        else:
            baseline[token] = volume
            events[(token, start)].append((False, None, 0, tick.get("oi")))
    candles = {}
    for (token, start), bucket in events.items():
        trades = [e for e in bucket if e[0]]
        if not trades:
            continue
        after_first = bucket[bucket.index(trades[0]):]
        ois = [e[3] for e in after_first if e[3] is not None]
        prices = [e[1] for e in trades]
        candles[(token, int(start.timestamp()))] = [
            int(start.timestamp()), prices[0], max(prices), min(prices), prices[-1],
            sum(e[2] for e in trades), ois[-1] if ois else 0]
    return candles


def test_every_candle_of_the_day_equals_the_reference_fold(day):
    report, stream, (builder, closed) = day
    for interval, secs in INTERVALS.items():
        got = {(c.token, c.start): c.values for c in closed if c.interval == interval}
        expected = reference(stream, interval, secs)
        assert len(got) == sum(1 for c in closed if c.interval == interval)  # one candle per bucket
        assert got == expected, interval
    assert builder.late_ticks > 0 and builder.volume_resets >= 1


def test_the_quirks_are_in_the_day_and_show_in_the_candles(day):
    report, stream, (_, closed) = day
    minutes = {(c.token, c.start) for c in closed if c.interval == "minute"}
    gap_start, gap_end = report.gap
    inside = [m for m in minutes if gap_start + 60 <= m[1] < gap_end - 60]
    assert inside == []  # nothing arrived: no candle invented for the gap
    assert report.late_packets > 0 and report.replayed_packets == 1
    illiquid = sorted(start for token, start in minutes if token == report.illiquid)
    assert 0 < len(illiquid) < 30  # fifty minutes, but minutes without a trade have no candle
    token, first_step = report.late_starter
    assert min(start for t, start in minutes if t == token) >= first_step - 60


def test_a_days_candles_add_up_to_its_volume(day):
    report, stream, (_, closed) = day
    reliance = instruments_by_symbol(7, DAY, ["NSE:RELIANCE"])[0].instrument_token
    most = max(t["volume_traded"] for _, t in stream if t["instrument_token"] == reliance)
    for interval in ("minute", "15minute", "60minute"):
        assert sum(c.volume for c in closed if c.interval == interval and c.token == reliance) == most
