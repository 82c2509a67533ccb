"""Time as the service shows it: ISO 8601 with the exchange's offset (IST)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

IST = timezone(timedelta(hours=5, minutes=30), "IST")


def now_iso() -> str:
    return datetime.now(IST).isoformat(timespec="milliseconds")
