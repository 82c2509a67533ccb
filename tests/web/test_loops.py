"""A replica's background loop (pure logic): a failing turn never ends it, and /health's report
says whether it is failing now, not whether it ever failed."""

from __future__ import annotations

import redis

from ticker.web.loops import Loop


class Flaky(Loop):
    name = "flaky"

    def __init__(self, outcomes: list[Exception | None]):
        super().__init__(sleep=lambda _secs: None)
        self.outcomes = outcomes

    def turn(self) -> None:
        outcome = self.outcomes.pop(0)
        if outcome is not None:
            raise outcome


def test_failures_count_in_a_row_and_clear_once_a_turn_completes():
    loop = Flaky([redis.ConnectionError("gone"), RuntimeError("bug"), None])
    loop.run_once()
    loop.run_once()
    failing = loop.report()
    assert failing["failures"] == 2 and failing["last_error"] == "RuntimeError: bug"
    loop.run_once()
    recovered = loop.report()
    assert recovered["failures"] == 0 and "last_error" not in recovered and recovered["ok"]
