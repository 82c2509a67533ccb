"""The fold of ticks into OHLCV candles (pure logic, no I/O).

Every rule below is documented for users in docs/API.md ("Candles") and tested in
tests/candles/test_build.py and, against a recorded trading day, tests/candles/test_recorded_day.py.

- **Intervals** (Kite's historical API names, plus `second`, which Kite lacks): `second` (1 s),
  `minute` (the default), `5minute`, `15minute`, `60minute`. Buckets are aligned to 09:15 IST,
  the NSE open, as Kite's historical candles are (a `60minute` candle starts at 09:15, 10:15, …;
  the shorter intervals divide 15 minutes, so they also fall on the clock's minutes).
- **Time**: a tick belongs to the bucket of its `exchange_timestamp` (full mode). A tick without
  one (quote and ltp modes) is placed by its `ingest_ts`, when the shard received it: a tick's
  `last_trade_time` is the time of the last trade, not of this tick, and a quote-mode tick has
  none either. Whole seconds: Kite stamps ticks to the second.
- **Trades**: a tick counts when it carries a trade, that is when its `volume_traded` grew since
  the series' previous tick. A tick whose volume did not move (a change of the order book only)
  opens no candle and changes no price: no candle is invented for a bucket without a trade. It
  does update the forming candle's `oi` when it falls in that candle's bucket. Ticks without
  `volume_traded` (indices, ltp mode) count every time, with volume 0.
- **Volume** is the sum of the growths of the cumulative `volume_traded`. The first tick of a
  token's IST day counts its whole `volume_traded` when it is stamped before 09:16 IST (the
  open's candle carries the pre-open auction's volume, as Kite's does); later in the day (the
  instrument began streaming mid-session) it is only the baseline: it adds no volume and, since
  nothing says when its price traded, opens no candle. Trades made while no tick reached the
  builder (a feed gap, a builder restart) land in the first candle after the gap, so a day's
  candles still add up to its volume. A `volume_traded` that goes down on a tick stamped later
  than the previous one is a reset of the counter: it becomes the new baseline, adds nothing,
  and is counted in `volume_resets`.
- **`oi`** is the open interest of the candle's last counted tick (0 for instruments without).
- **Late ticks** are dropped and counted in `late_ticks` (never amended into a candle): a tick
  stamped earlier than the series' latest accepted tick, or stamped in the same second with a
  lower `volume_traded`, or arriving when its bucket's end plus the close grace has already passed
  on the builder's clock. The later tick's cumulative volume already counts its trade; only its
  price is lost. (One Kite connection delivers a token's ticks in order: disorder comes from a
  shard takeover or a replayed packet.)
- **Closing**: a forming candle closes when a tick of a later bucket of the same series arrives,
  or when the builder's clock passes the bucket's end plus `grace_secs` (`CANDLE_CLOSE_GRACE_SECS`).
- **Day roll-over**: the first tick of a new IST date closes the previous day's candle and starts
  the day's volume afresh (the first-tick rule above).
- **Restart**: `state()` and `restore()` carry every series (the forming candle, the volume
  baseline, the latest tick time) across a restart; restored, the builder continues the forming
  candle as if it had never stopped, the gap rule aside.

Each (token, interval) is a series folded on its own, so a tick late for the `second` candle can
still count in the `minute` one.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ticker.clock import IST

INTERVALS: dict[str, int] = {"second": 1, "minute": 60, "5minute": 300, "15minute": 900, "60minute": 3600}
DEFAULT_INTERVAL = "minute"  # Kite's historical API has no default; a minute is what charts ask for most
IST_OFFSET_SECS = 19_800  # +05:30
DAY_SECS = 86_400
OPEN_SECS = 9 * 3600 + 15 * 60  # 09:15 IST, the NSE open: buckets are aligned to it
OPENING_WINDOW_SECS = 60  # a day's first tick before 09:16 counts its whole volume_traded
DEFAULT_GRACE_SECS = 3.0
_TIME_CACHE_SIZE = 100_000


def day_of(ts: int) -> int:
    """The IST date of epoch second `ts`, as days since 1970-01-01."""
    return (ts + IST_OFFSET_SECS) // DAY_SECS


def bucket_start(ts: int, secs: int) -> int:
    """Start (epoch seconds) of the `secs`-long bucket holding epoch second `ts`, aligned to
    09:15 IST of its day."""
    anchor = day_of(ts) * DAY_SECS - IST_OFFSET_SECS + OPEN_SECS
    return anchor + (ts - anchor) // secs * secs


def kite_time(ts: int) -> str:
    """Epoch seconds as Kite's historical API writes a candle's time: `2026-11-30T09:15:00+0530`."""
    return datetime.fromtimestamp(ts, IST).strftime("%Y-%m-%dT%H:%M:%S%z")


_epochs: dict[str, int] = {}


def epoch_of(text: str) -> int:
    """Epoch seconds of an ISO 8601 time with offset (as ticks carry them); cached, since a
    token's ticks repeat the same few seconds."""
    ts = _epochs.get(text)
    if ts is None:
        if len(_epochs) >= _TIME_CACHE_SIZE:
            _epochs.clear()
        ts = _epochs[text] = int(datetime.fromisoformat(text).timestamp())
    return ts


def tick_time(tick: Mapping[str, Any], received: float) -> int:
    """The epoch second a tick belongs to: `exchange_timestamp`, else `ingest_ts` (ms), else
    `received` (the caller's receive time, epoch seconds)."""
    stamp = tick.get("exchange_timestamp")
    if stamp:
        return epoch_of(stamp) if isinstance(stamp, str) else int(stamp.timestamp())
    ingest_ms = tick.get("ingest_ts")
    return ingest_ms // 1000 if ingest_ms else int(received)


START, OPEN, HIGH, LOW, CLOSE, VOLUME, OI = range(7)  # a candle's `values` list


class Candle:
    """One candle of a series: `values` is `[start, open, high, low, close, volume, oi]`, `start`
    in epoch seconds, prices as the ticks carry them (rupees), `volume` and `oi` quantities.
    `closed` once no tick can change it any more. The fold updates `values` in place and
    storage encodes that list as it is, so a candle's update costs no copy."""

    __slots__ = ("token", "interval", "values", "closed")

    def __init__(self, token: int, interval: str, values: list[Any], closed: bool = False):
        self.token = token
        self.interval = interval
        self.values = values
        self.closed = closed

    start = property(lambda self: self.values[START])
    open = property(lambda self: self.values[OPEN])
    high = property(lambda self: self.values[HIGH])
    low = property(lambda self: self.values[LOW])
    close = property(lambda self: self.values[CLOSE])
    volume = property(lambda self: self.values[VOLUME])
    oi = property(lambda self: self.values[OI])

    def row(self) -> list[Any]:
        """Kite's historical candle: `[time, open, high, low, close, volume, oi]`."""
        return [kite_time(self.values[START]), *self.values[OPEN:]]

    def __repr__(self) -> str:
        return f"Candle({self.token}, {self.interval!r}, {self.values}, closed={self.closed})"


@dataclass(slots=True)
class Series:
    """One (token, interval)'s fold state: the forming candle, today's volume baseline, the latest
    accepted tick's time and the IST day they belong to."""

    interval: str
    secs: int
    day: int = -1
    last_ts: int = -1
    baseline: int = 0
    candle: Candle | None = None


class CandleBuilder:
    """Folds ticks into candles for `intervals` (names of INTERVALS), closing them `grace_secs`
    after their bucket's end on the caller's clock.

    Feed it with `add(tick, now)` (ticks as the bus carries them: KiteTicker's dicts) and
    `close_due(now)`; collect what changed with `take_updates()`. Counters: `late_ticks`,
    `volume_resets`, `candles_closed`."""

    def __init__(self, intervals: Iterable[str] = INTERVALS, grace_secs: float = DEFAULT_GRACE_SECS):
        self.intervals = {name: INTERVALS[name] for name in intervals}
        self.grace_secs = grace_secs
        self.series: dict[int, list[Series]] = {}  # token -> its series, one per interval
        self._closing: list[tuple[float, int, str, int]] = []  # heap of (close at, token, interval, start)
        self._changed: dict[tuple[int, str], Candle] = {}
        self._closed: list[Candle] = []
        self.late_ticks = 0
        self.volume_resets = 0
        self.candles_closed = 0

    def add(self, tick: Mapping[str, Any], now: float) -> None:
        """Fold one tick into every interval's series; `now` is the builder's clock (epoch s)."""
        ts = tick_time(tick, now)
        token = tick["instrument_token"]
        price = tick["last_price"]
        volume = tick.get("volume_traded")
        oi = tick.get("oi")
        series_list = self.series.get(token)
        if series_list is None:
            series_list = self.series[token] = [Series(name, secs) for name, secs in self.intervals.items()]
        day = (ts + IST_OFFSET_SECS) // DAY_SECS
        anchor = day * DAY_SECS - IST_OFFSET_SECS + OPEN_SECS  # 09:15 IST of the tick's day
        for series in series_list:
            self._fold(series, token, ts, day, anchor, price, volume, oi, now)

    def _fold(self, series: Series, token: int, ts: int, day: int, anchor: int, price: float,
              volume: int | None, oi: int | None, now: float) -> None:
        secs = series.secs
        start = anchor + (ts - anchor) // secs * secs
        if (ts < series.last_ts or start + secs + self.grace_secs <= now
                or (ts == series.last_ts and volume is not None and volume < series.baseline)):
            self.late_ticks += 1
            return
        name = series.interval
        if day != series.day:
            self._close(series)
            series.day = day
            opening = ts < anchor + OPENING_WINDOW_SECS
            series.baseline = 0 if opening or volume is None else volume
        series.last_ts = ts
        traded = self._volume_growth(series, volume)
        candle = series.candle
        if candle is not None and candle.values[START] != start:
            self._close(series)
            candle = None
        if traded is None:  # no trade: only the open interest of the forming candle moves
            if candle is not None and oi is not None and oi != candle.values[OI]:
                candle.values[OI] = oi
                self._changed[(token, name)] = candle
            return
        if candle is None:
            candle = series.candle = Candle(token, name, [start, price, price, price, price, traded, oi or 0])
            heapq.heappush(self._closing, (start + series.secs + self.grace_secs, token, name, start))
        else:
            values = candle.values
            if price > values[HIGH]:
                values[HIGH] = price
            elif price < values[LOW]:
                values[LOW] = price
            values[CLOSE] = price
            values[VOLUME] += traded
            if oi is not None:
                values[OI] = oi
        self._changed[(token, name)] = candle

    def _volume_growth(self, series: Series, volume: int | None) -> int | None:
        """The volume a tick adds, or None when it carries no trade."""
        if volume is None:
            return 0
        if volume > series.baseline:
            traded = volume - series.baseline
            series.baseline = volume
            return traded
        if volume < series.baseline:
            self.volume_resets += 1
            series.baseline = volume
        return None

    def _close(self, series: Series) -> None:
        candle = series.candle
        if candle is None:
            return
        series.candle = None
        candle.closed = True
        self._changed.pop((candle.token, candle.interval), None)
        self._closed.append(candle)
        self.candles_closed += 1

    def close_due(self, now: float) -> None:
        """Close every forming candle whose bucket ended `grace_secs` or more before `now`."""
        closing = self._closing
        while closing and closing[0][0] <= now:
            _, token, name, start = heapq.heappop(closing)
            series = self._series(token, name)
            if series is not None and series.candle is not None and series.candle.values[START] == start:
                self._close(series)

    def _series(self, token: int, name: str) -> Series | None:
        for series in self.series.get(token, ()):
            if series.interval == name:
                return series
        return None

    def take_updates(self) -> tuple[list[Candle], list[Candle]]:
        """`(forming, closed)` since the last call: each forming candle that changed, once (its
        latest state), and every candle that closed, in the order they closed."""
        forming, closed = list(self._changed.values()), self._closed
        self._changed, self._closed = {}, []
        return forming, closed

    def forming(self, token: int, name: str) -> Candle | None:
        """The series' forming candle, if any."""
        series = self._series(token, name)
        return series.candle if series is not None else None

    def state(self, token: int) -> dict[str, list]:
        """Everything `restore` needs to continue a token's series: interval ->
        `[day, last_ts, baseline, candle values or None]`."""
        out = {}
        for series in self.series.get(token, ()):
            candle = series.candle.values if series.candle is not None else None
            out[series.interval] = [series.day, series.last_ts, series.baseline, candle]
        return out

    def restore(self, token: int, state: Mapping[str, list]) -> None:
        """Continue a token's series from `state()` (a restart); unknown intervals are ignored."""
        series_list = self.series[token] = [Series(name, secs) for name, secs in self.intervals.items()]
        for series in series_list:
            if series.interval not in state:
                continue
            name, secs = series.interval, series.secs
            series.day, series.last_ts, series.baseline, values = state[name]
            if values is not None:
                start = values[0]
                series.candle = Candle(token, name, list(values))
                heapq.heappush(self._closing, (start + secs + self.grace_secs, token, name, start))
