"""Which slots beat's supervisor keeps a shard running for (pure logic)."""

from tasks.shards import slots_to_run

SLOTS = ["a:0", "a:1", "a:2", "b:0"]


def test_with_no_demand_one_slot_is_kept_warm():
    assert slots_to_run(SLOTS, set()) == ["a:0"]


def test_every_busy_slot_runs_and_one_spare_beside_them():
    assert slots_to_run(SLOTS, {"a:0", "a:1"}) == ["a:0", "a:1", "a:2"]
    assert slots_to_run(SLOTS, {"a:1"}) == ["a:0", "a:1"]  # the first free one is the spare
    assert slots_to_run(SLOTS, set(SLOTS)) == SLOTS  # no spare left: nothing beyond the pool
