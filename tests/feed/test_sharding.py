"""Assigning tokens to connection slots (pure logic)."""

from ticker.feed.sharding import Assignment, assign, slot_api_key, slots_for


def test_slots_per_account():
    assert slots_for(["a", "b"], 2) == ["a:0", "a:1", "b:0", "b:1"]
    assert slot_api_key("key:with:colons:2") == "key:with:colons"


def test_new_tokens_fill_slots_first_fit_and_never_exceed_capacity():
    capacity = {"a:0": 50, "a:1": 50, "b:0": 50}
    result = assign(Assignment(), {t: "quote" for t in range(1, 121)}, capacity, now=0, grace_secs=60)

    assert result.load() == {"a:0": 50, "a:1": 50, "b:0": 20}
    assert not result.overflow


def test_beyond_capacity_overflows_instead_of_dropping_silently():
    result = assign(Assignment(), {t: "ltp" for t in range(1, 11)}, {"a:0": 4}, now=0, grace_secs=60)
    assert len(result.slots) == 4 and result.overflow == [5, 6, 7, 8, 9, 10]


def test_assignment_is_sticky():
    first = assign(Assignment(), {1: "quote", 2: "quote"}, {"a:0": 1, "a:1": 5}, now=0, grace_secs=60)
    second = assign(first, {1: "quote", 2: "full", 3: "ltp"}, {"a:0": 1, "a:1": 5}, now=1, grace_secs=60)
    assert (second.slots[1], second.slots[2]) == (first.slots[1], first.slots[2])
    assert second.modes[2] == "full"


def test_unwanted_token_stays_for_the_grace_period_then_goes():
    start = assign(Assignment(), {1: "quote"}, {"a:0": 5}, now=0, grace_secs=60)
    idle = assign(start, {}, {"a:0": 5}, now=10, grace_secs=60)
    assert idle.slots == {1: "a:0"} and idle.idle_since == {1: 10}
    still = assign(idle, {}, {"a:0": 5}, now=69, grace_secs=60)
    assert still.slots == {1: "a:0"}
    assert assign(still, {}, {"a:0": 5}, now=70, grace_secs=60).slots == {}


def test_wanted_again_within_grace_is_no_longer_idle():
    idle = assign(assign(Assignment(), {1: "quote"}, {"a:0": 5}, 0, 60), {}, {"a:0": 5}, now=10, grace_secs=60)
    again = assign(idle, {1: "quote"}, {"a:0": 5}, now=20, grace_secs=60)
    assert again.slots == {1: "a:0"} and again.idle_since == {}


def test_idle_tokens_make_room_for_wanted_ones():
    idle = assign(assign(Assignment(), {1: "quote"}, {"a:0": 1}, 0, 60), {}, {"a:0": 1}, now=1, grace_secs=60)
    result = assign(idle, {2: "quote"}, {"a:0": 1}, now=2, grace_secs=60)
    assert result.slots == {2: "a:0"} and not result.overflow


def test_tokens_of_an_unusable_slot_move_to_free_capacity():
    first = assign(Assignment(), {1: "quote", 2: "quote"}, {"a:0": 2, "b:0": 2}, 0, 60)
    assert set(first.slots.values()) == {"a:0"}
    moved = assign(first, {1: "quote", 2: "quote"}, {"b:0": 2}, now=1, grace_secs=60)
    assert moved.slots == {1: "b:0", 2: "b:0"}


def test_room_that_vanished_keeps_its_tokens_waiting_instead_of_overflowing():
    # One account's token expired: its slot cannot stream, but its room still belongs to the pool.
    first = assign(Assignment(), {1: "quote", 2: "quote", 3: "quote"}, {"a:0": 2, "b:0": 2}, 0, 60)
    outage = assign(first, {1: "quote", 2: "quote", 3: "quote", 4: "quote"}, {"b:0": 2}, now=1, grace_secs=60,
                    unusable=2)
    assert len(outage.slots) == 2 and not outage.overflow
    assert sorted(outage.waiting) == sorted({1, 2, 3, 4} - set(outage.slots))
    beyond = assign(outage, {t: "quote" for t in range(1, 7)}, {"b:0": 2}, now=2, grace_secs=60, unusable=2)
    assert beyond.overflow == [5, 6]  # beyond the whole pool: exhausted for real
    assert set(beyond.waiting) == set(outage.waiting)  # those admitted first keep their place


def test_with_every_slot_unusable_everything_within_the_pool_waits():
    first = assign(Assignment(), {1: "quote", 2: "ltp"}, {"a:0": 3}, 0, 60)
    expired = assign(first, {1: "quote", 2: "ltp", 3: "full"}, {}, now=1, grace_secs=60, unusable=3)
    assert expired.slots == {} and expired.waiting == [1, 2, 3] and expired.overflow == []
    back = assign(expired, {1: "quote", 2: "ltp", 3: "full"}, {"a:0": 3}, now=2, grace_secs=60)
    assert back.slots == {1: "a:0", 2: "a:0", 3: "a:0"} and back.waiting == []
