"""What a replica announces to clients about the upstream, token by token (pure logic)."""

from __future__ import annotations

from ticker.web.upstream import UpstreamNotices


def test_a_token_down_long_enough_is_announced_once_then_restored_once():
    notices = UpstreamNotices(down_notice_secs=2)
    assert not notices.update({1: None, 2: None}, now=0)
    assert not notices.update({1: "token_expired", 2: None}, now=1)  # not yet: it may come back at once
    changes = notices.update({1: "token_expired", 2: None}, now=3)
    assert changes.down == {"token_expired": [1]} and changes.restored == []
    assert not notices.update({1: "token_expired", 2: None}, now=4)  # told once, not every second
    changes = notices.update({1: None, 2: None}, now=5)
    assert changes.restored == [1] and not changes.down


def test_a_quick_reconnect_is_never_announced():
    notices = UpstreamNotices(down_notice_secs=2)
    notices.update({1: "feed_down"}, now=0)
    changes = notices.update({1: None}, now=1)
    assert not changes.down and not changes.restored


def test_a_new_reason_for_the_same_outage_is_announced_with_the_time_it_began():
    notices = UpstreamNotices(down_notice_secs=2)
    notices.update({1: "feed_down"}, now=0)
    changes = notices.update({1: "token_expired"}, now=2.5)  # the reconnect met a refused token
    assert changes.down == {"token_expired": [1]}
    changes = notices.update({1: "no_connection"}, now=3)
    assert not changes  # a different reason of an announced outage waits its own notice time ...
    assert notices.update({1: "no_connection"}, now=5).down == {"no_connection": [1]}


def test_tokens_nobody_holds_are_forgotten_and_late_subscribers_learn_the_state():
    notices = UpstreamNotices(down_notice_secs=0)
    notices.update({1: "token_expired", 2: "token_expired", 3: None}, now=0)
    assert notices.down_among([2, 3, 4]) == {"token_expired": [2]}
    notices.update({2: "token_expired"}, now=1)
    assert notices.down_among([1, 2]) == {"token_expired": [2]}
