"""Rate limits (pure logic)."""

from __future__ import annotations

from ticker.web.limits import AttemptWindow, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_a_burst_then_the_rate():
    clock = Clock()
    bucket = TokenBucket(rate=5, clock=clock)

    assert [bucket.allow() for _ in range(7)] == [True] * 5 + [False] * 2
    clock.now += 0.2  # one more message's worth
    assert bucket.allow() and not bucket.allow()
    clock.now += 60  # idle time never saves up more than a burst
    assert sum(bucket.allow() for _ in range(20)) == 5


def test_attempt_window_counts_per_address_per_second():
    clock = Clock()
    window = AttemptWindow(per_second=2, clock=clock)

    assert [window.allow("10.0.0.1") for _ in range(3)] == [True, True, False]
    assert window.allow("10.0.0.2")
    clock.now += 1
    assert window.allow("10.0.0.1")
    assert len(window.counts) == 1  # last second's addresses are forgotten
