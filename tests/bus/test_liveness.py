"""When a long-lived connection asks for a sign of life, and when it gives up (pure logic)."""

from __future__ import annotations

import pytest

from ticker.bus.liveness import ConnectionSilent, Liveness


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_quiet_connection_is_pinged_once_a_second_and_given_up_after_the_limit():
    clock = Clock()
    liveness = Liveness(ping_every=1.0, silent_after=5.0, clock=clock)
    assert not liveness.ping_due()
    clock.now = 1.0
    assert liveness.ping_due()
    liveness.pinged()
    assert not liveness.ping_due()  # one ping per second of silence, not one per turn
    clock.now = 2.0
    assert liveness.ping_due()
    clock.now = 5.0
    liveness.check()  # silent, but within the limit
    clock.now = 5.1
    with pytest.raises(ConnectionSilent):
        liveness.check()


def test_anything_heard_counts_as_a_sign_of_life():
    clock = Clock()
    liveness = Liveness(ping_every=1.0, silent_after=5.0, clock=clock)
    for second in range(1, 20):
        clock.now = float(second)
        liveness.heard()
        assert not liveness.ping_due() and not liveness.silent()
