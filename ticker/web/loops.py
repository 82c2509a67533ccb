"""A web replica's background loops: each one job, run every so often, forever.

`Loop` owns what every loop needs: the schedule, error handling (an error is logged, counted
and retried at the next turn, never the end of the loop), and a record of when each loop last
completed a turn. `/health` reads that record, so a loop that stopped or starved (a crowd
holding every greenlet, Redis gone) shows up with its name instead of failing silently.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis

from ticker import metrics

log = logging.getLogger(__name__)

LATE_TURNS = 3  # a loop this many turns (and at least LATE_MIN_SECS) behind is reported late
LATE_MIN_SECS = 5.0


class Loop:
    """Calls `turn()` every `every_secs` seconds. Subclasses set `name` and `every_secs` and
    implement `turn`; a Redis error is expected now and then (a restart) and logged as a warning,
    anything else with its traceback."""

    name = "loop"
    every_secs = 1.0

    def __init__(self, sleep: Callable[[float], None] = time.sleep):
        self.sleep = sleep
        self.started = time.monotonic()
        self.last_ok: float | None = None  # monotonic time of the last completed turn
        self.last_error: str | None = None
        self.failures = 0  # in a row, since the last completed turn (the total: ticker_loop_failures_total)

    def turn(self) -> None:
        raise NotImplementedError

    def run_forever(self) -> None:
        while True:
            self.run_once()
            self.sleep(self.every_secs)

    def run_once(self) -> None:
        try:
            self.turn()
        except redis.RedisError as exc:
            self._failed(exc)
            log.warning("%s: Redis unavailable (%s); retrying in %gs", self.name, exc, self.every_secs)
        except Exception as exc:  # noqa: BLE001  (a bug in one turn must not end the loop)
            self._failed(exc)
            log.exception("%s failed; retrying in %gs", self.name, self.every_secs)
        else:
            self.last_ok = time.monotonic()
            self.last_error = None
            self.failures = 0
            metrics.LOOP_LAST_SUCCESS.labels(loop=self.name).set(time.time())

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        metrics.LOOP_FAILURES.labels(loop=self.name).inc()

    def lag_secs(self, now: float | None = None) -> float:
        """Seconds since the last completed turn (since the start if none completed yet)."""
        now = time.monotonic() if now is None else now
        return now - (self.last_ok if self.last_ok is not None else self.started)

    def late(self, now: float | None = None) -> bool:
        return self.lag_secs(now) > max(LATE_MIN_SECS, LATE_TURNS * self.every_secs)

    def report(self) -> dict:
        """For /health: how far behind the loop is, and while it is failing, how many turns in a
        row failed and the last error."""
        lag = self.lag_secs()
        return {"lag_secs": round(lag, 2), "ok": not self.late(), "failures": self.failures,
                **({"last_error": self.last_error} if self.last_error else {})}
