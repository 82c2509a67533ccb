"""Beat's trading-day schedule: the next reload in IST skips weekends and listed holidays."""

from __future__ import annotations

from datetime import UTC, date, datetime, time

import pytest

from tasks.registry import RELOAD_AT, trading_days
from ticker.registry.calendar import IST, next_token_expiry, next_trading_run, parse_holidays

HOLIDAY = date(2026, 12, 7)  # a Monday


def ist(*args) -> datetime:
    return datetime(*args, tzinfo=IST)


def test_friday_after_the_reload_skips_the_weekend_and_a_listed_monday_holiday():
    friday_evening = ist(2026, 12, 4, 18, 0)
    assert next_trading_run(friday_evening, RELOAD_AT, set()) == ist(2026, 12, 7, 8, 15)
    assert next_trading_run(friday_evening, RELOAD_AT, {HOLIDAY}) == ist(2026, 12, 8, 8, 15)


def test_before_the_reload_time_it_runs_the_same_morning():
    assert next_trading_run(ist(2026, 12, 8, 7, 0), RELOAD_AT, set()) == ist(2026, 12, 8, 8, 15)


def test_utc_input_is_read_in_ist():
    # 02:50 UTC is 08:20 IST on Tuesday: today's run has passed, the next is Wednesday.
    assert next_trading_run(datetime(2026, 12, 8, 2, 50, tzinfo=UTC), RELOAD_AT, set()) == ist(2026, 12, 9, 8, 15)


def test_holidays_file_format():
    assert parse_holidays("# NSE 2026\n2026-12-07  # a holiday\n\n2026-12-25\n") == {HOLIDAY, date(2026, 12, 25)}
    with pytest.raises(ValueError, match="line 2"):
        parse_holidays("2026-12-07\n7 Dec\n")


def test_beat_schedule_is_due_by_the_holidays_file(tmp_path):
    holidays = tmp_path / "holidays.txt"
    holidays.write_text(f"{HOLIDAY.isoformat()}\n")
    now = ist(2026, 12, 7, 9, 0)  # the Monday holiday, after 08:15
    schedule = trading_days(RELOAD_AT, str(holidays), nowfun=lambda: now)
    last_run = ist(2026, 12, 4, 8, 15)  # Friday's reload
    due, next_check = schedule.is_due(last_run)
    assert not due and 0 < next_check <= 3600
    assert schedule.remaining_estimate(last_run).total_seconds() == pytest.approx((23 * 60 + 15) * 60)
    holidays.write_text("")  # the operator removes the holiday: due at once, no restart
    assert schedule.is_due(last_run)[0]


def test_schedule_survives_beats_pickling():
    import pickle

    schedule = trading_days(time(8, 15), "/tmp/none")
    assert pickle.loads(pickle.dumps(schedule)) == schedule


def test_token_expiry_is_the_next_six_am_ist():
    assert next_token_expiry(ist(2026, 12, 8, 9, 0)) == ist(2026, 12, 9, 6, 0)
    assert next_token_expiry(ist(2026, 12, 8, 5, 0)) == ist(2026, 12, 8, 6, 0)
