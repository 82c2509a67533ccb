"""Tick dicts as `kiteconnect.KiteTicker` hands them, and `seq` gap tracking (pure logic, no I/O).

The service sends ticks as JSON (docs/API.md "Ticks"): Kite's keys for the tick's mode, with
`last_trade_time` and `exchange_timestamp` as ISO 8601 strings in IST, plus `seq`, `epoch`,
`ingest_ts`, and on a snapshot `snapshot: true` and `age_ms`. `KiteTicker._parse_binary` gives
the same keys with those timestamps as naive `datetime`s in the machine's local time
(`datetime.fromtimestamp`), which is what `to_kite` converts them to.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

TIMESTAMP_KEYS = ("last_trade_time", "exchange_timestamp", "timestamp")
# Keys the service adds that KiteTicker's ticks do not have; `seq` and `epoch` are kept.
SERVICE_ONLY_KEYS = ("ingest_ts", "snapshot", "age_ms")


def parse_timestamp(value: Any) -> datetime | None:
    """An ISO 8601 string with offset as a naive local datetime, as `datetime.fromtimestamp` gives
    it; None stays None, and a datetime or anything unparsable is returned as it is."""
    if not isinstance(value, str):
        return value
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return moment
    return moment.astimezone().replace(tzinfo=None)


def with_datetimes(tick: dict[str, Any]) -> dict[str, Any]:
    """`tick` (changed in place and returned) with its timestamps as datetimes."""
    for key in TIMESTAMP_KEYS:
        if key in tick:
            tick[key] = parse_timestamp(tick[key])
    return tick


def to_kite(tick: dict[str, Any]) -> dict[str, Any]:
    """The dict `kiteconnect.KiteTicker` would hand to `on_ticks` for this tick, plus `seq` and
    `epoch`: timestamps as datetimes, prices as floats, the service's own stamps removed."""
    kite = {key: value for key, value in tick.items() if key not in SERVICE_ONLY_KEYS}
    if "last_price" in kite:
        kite["last_price"] = float(kite["last_price"])
    return with_datetimes(kite)


def candle_of(candle: dict[str, Any]) -> dict[str, Any]:
    """A live candle (docs/API.md, "Live candles") with its `date` as a timezone-aware datetime
    in IST (`2026-11-30T10:02:00+0530`), as `KiteConnect.historical_data` gives a row's date;
    the other keys as the service sent them."""
    date = candle.get("date")
    if isinstance(date, str):
        try:
            return {**candle, "date": datetime.strptime(date, "%Y-%m-%dT%H:%M:%S%z")}
        except ValueError:
            return dict(candle)
    return dict(candle)


Position = tuple[int, int]  # (epoch, seq): orders one token's ticks across epochs


class GapTracker:
    """Follows each token's `(epoch, seq)` and says which ticks are new and where ticks went missing.

    Within one epoch `seq` rises by one per tick the service ingested; a jump means ticks were
    conflated or lost (a gap). A new, larger epoch starts counting again (not a gap), and a
    snapshot (`snapshot: true`) restarts the count for its token (not a gap either). A tick at or
    before the last one seen for its token (a snapshot repeating what arrived before a reconnect)
    is stale.
    """

    def __init__(self) -> None:
        self._last: dict[int, Position] = {}

    def observe(self, tick: dict[str, Any]) -> tuple[bool, tuple[int, int] | None]:
        """`(fresh, gap)` for a tick: `fresh` False for a stale tick (drop it); `gap` is
        `(expected_seq, got_seq)` when ticks are missing before this one, else None. A tick
        without `seq` or `epoch` is fresh and never a gap."""
        token, seq, epoch = tick.get("instrument_token"), tick.get("seq"), tick.get("epoch")
        if token is None or seq is None or epoch is None:
            return True, None
        last = self._last.get(token)
        if last is not None and (epoch, seq) <= last:
            return False, None
        self._last[token] = (epoch, seq)
        if last is None or tick.get("snapshot") or epoch != last[0] or seq == last[1] + 1:
            return True, None
        return True, (last[1] + 1, seq)

    def forget(self, tokens) -> None:
        """Stop following `tokens` (unsubscribed: the next tick of theirs starts afresh)."""
        for token in tokens:
            self._last.pop(token, None)
