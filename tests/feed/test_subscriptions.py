"""Planning incremental changes to a Kite connection (pure logic). The grace period before an
unsubscribe belongs to the assigner: tests/feed/test_sharding.py."""

from ticker.feed.subscriptions import apply, plan


def test_new_tokens_are_subscribed_in_their_mode():
    changes = plan({}, {1: "quote", 2: "full"}, capacity=10)
    assert changes.subscribe == {"quote": [1], "full": [2]}
    assert not changes.unsubscribe and not changes.set_mode


def test_tokens_no_longer_assigned_are_unsubscribed():
    current = {1: "quote", 2: "ltp"}
    changes = plan(current, {2: "ltp"}, capacity=10)
    assert changes.unsubscribe == [1] and not changes.subscribe and not changes.set_mode
    apply(current, changes)
    assert current == {2: "ltp"}


def test_nothing_to_do_is_falsy():
    assert not plan({1: "quote"}, {1: "quote"}, capacity=10)


def test_mode_changes_without_resubscribing():
    changes = plan({1: "quote"}, {1: "full"}, capacity=10)
    assert changes.set_mode == {"full": [1]} and not changes.subscribe


def test_capacity_is_never_exceeded():
    current = {1: "quote", 2: "quote"}
    changes = plan(current, {1: "quote", 2: "quote", 3: "ltp", 4: "ltp", 5: "ltp"}, capacity=4)
    assert changes.subscribe == {"ltp": [3, 4]}
    assert changes.over_capacity == [5]
    apply(current, changes)
    assert len(current) == 4


def test_room_freed_by_unsubscribes_is_reused_at_once():
    changes = plan({1: "quote", 2: "quote"}, {3: "quote", 4: "quote"}, capacity=2)
    assert changes.unsubscribe == [1, 2] and changes.subscribe == {"quote": [3, 4]}
