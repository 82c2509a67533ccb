"""Planning incremental changes to a Kite connection (pure logic)."""

from ticker.feed.subscriptions import apply, plan


def test_new_tokens_are_subscribed_in_their_mode():
    changes = plan({}, {1: "quote", 2: "full"}, {}, now=0, grace_secs=60, capacity=10)
    assert changes.subscribe == {"quote": [1], "full": [2]}
    assert not changes.unsubscribe and not changes.set_mode


def test_unwanted_token_waits_for_the_grace_period():
    current, since = {1: "quote"}, {}
    assert not plan(current, {}, since, now=100, grace_secs=60, capacity=10)
    assert not plan(current, {}, since, now=159, grace_secs=60, capacity=10)
    changes = plan(current, {}, since, now=160, grace_secs=60, capacity=10)
    assert changes.unsubscribe == [1]
    apply(current, changes, since)
    assert current == {} and since == {}


def test_wanted_again_within_grace_cancels_the_unsubscribe():
    current, since = {1: "quote"}, {}
    plan(current, {}, since, now=0, grace_secs=60, capacity=10)
    assert not plan(current, {1: "quote"}, since, now=30, grace_secs=60, capacity=10)
    assert since == {}
    assert not plan(current, {}, since, now=80, grace_secs=60, capacity=10).unsubscribe


def test_mode_changes_without_resubscribing():
    changes = plan({1: "quote"}, {1: "full"}, {}, now=0, grace_secs=60, capacity=10)
    assert changes.set_mode == {"full": [1]} and not changes.subscribe


def test_capacity_is_never_exceeded():
    current = {1: "quote", 2: "quote"}
    changes = plan(current, {1: "quote", 2: "quote", 3: "ltp", 4: "ltp", 5: "ltp"}, {}, 0, 60, capacity=4)
    assert changes.subscribe == {"ltp": [3, 4]}
    assert changes.over_capacity == [5]
    apply(current, changes, {})
    assert len(current) == 4
