"""Rate limits and the client address behind proxies (pure logic)."""

from __future__ import annotations

from ticker.web.limits import AttemptWindow, TokenBucket, client_address


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


def test_client_address_ignores_x_forwarded_for_without_trusted_proxies():
    environ = {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.7"}

    assert client_address(environ, 0) == "127.0.0.1"


def test_client_address_is_the_entry_the_farthest_trusted_proxy_appended():
    environ = {"REMOTE_ADDR": "10.0.0.2", "HTTP_X_FORWARDED_FOR": "6.6.6.6, 203.0.113.7,10.0.0.1"}

    assert client_address(environ, 1) == "10.0.0.1"
    assert client_address(environ, 2) == "203.0.113.7"
    assert client_address(environ, 3) == "6.6.6.6"


def test_client_address_falls_back_to_the_peer_when_the_header_is_short_or_missing():
    assert client_address({"REMOTE_ADDR": "10.0.0.2", "HTTP_X_FORWARDED_FOR": "203.0.113.7"}, 2) == "10.0.0.2"
    assert client_address({"REMOTE_ADDR": "10.0.0.2"}, 1) == "10.0.0.2"
    assert client_address({"REMOTE_ADDR": "10.0.0.2", "HTTP_X_FORWARDED_FOR": ""}, 1) == "10.0.0.2"
