"""The trading calendar: weekdays that are not exchange holidays, in IST (pure logic, no I/O
except reading the operator's holidays file).

The holidays file is plain text, one `YYYY-MM-DD` per line; `#` starts a comment. It is read
again whenever the schedule is checked, so an edit takes effect without restarting beat.
"""

from __future__ import annotations

import logging
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

IST = ZoneInfo("Asia/Kolkata")
SATURDAY = 5

log = logging.getLogger(__name__)


def parse_holidays(text: str) -> set[date]:
    """The dates of a holidays file's text; a malformed line raises ValueError with its number."""
    holidays = set()
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        try:
            holidays.add(date.fromisoformat(entry))
        except ValueError:
            raise ValueError(f"holidays file line {number}: {entry!r} is not YYYY-MM-DD") from None
    return holidays


def read_holidays(path: str | Path) -> set[date]:
    """The holidays in `path`; none if the file does not exist."""
    try:
        return parse_holidays(Path(path).read_text())
    except FileNotFoundError:
        return set()


def is_trading_day(day: date, holidays: set[date]) -> bool:
    return day.weekday() < SATURDAY and day not in holidays


def next_trading_run(after: datetime, at: time, holidays: set[date]) -> datetime:
    """The first `at` (IST wall clock) strictly after `after` that falls on a trading day."""
    local = after.astimezone(IST)
    day = local.date()
    while True:
        candidate = datetime.combine(day, at, tzinfo=IST)
        if candidate > local and is_trading_day(day, holidays):
            return candidate
        day += timedelta(days=1)


KITE_TOKEN_EXPIRY = time(6, 0)  # IST: Kite invalidates every access token around 06:00 each day


def next_token_expiry(after: datetime) -> datetime:
    """When a Kite access token issued at `after` stops working (the next 06:00 IST)."""
    local = after.astimezone(IST)
    expiry = datetime.combine(local.date(), KITE_TOKEN_EXPIRY, tzinfo=IST)
    return expiry if expiry > local else expiry + timedelta(days=1)
