"""The token → slot assignment in Redis: computed by whoever gets the lock, read by shards.

Shards and beat's supervisor call `rebalance` often; it does work only when demand, the set of
usable slots or an idle token's grace period has moved since the last assignment, and then
writes only what changed. Each shard reads just its own slot's hash.
"""

from __future__ import annotations

import time

import redis

from ticker.bus import keys
from ticker.bus.demand import demand_version, merge, read_demand
from ticker.feed.sharding import Assignment, assign

LOCK_MS = 2000  # far above one computation; a crashed holder blocks others this long at most


def load(client: redis.Redis) -> Assignment:
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.ASSIGNED_SLOT)
    pipe.hgetall(keys.ASSIGNED_MODE)
    pipe.hgetall(keys.ASSIGNED_IDLE)
    slots, modes, idle = pipe.execute()
    return Assignment(
        slots={int(t): s for t, s in slots.items()},
        modes={int(t): m for t, m in modes.items()},
        idle_since={int(t): float(since) for t, since in idle.items()},
    )


def usable_slots(client: redis.Redis) -> dict[str, int]:
    """Slot -> capacity for accounts whose token is valid, in slot order."""
    return {slot: int(cap) for slot, cap in sorted(client.hgetall(keys.USABLE_SLOTS).items())}


def set_usable_slots(client: redis.Redis, capacity: dict[str, int]) -> bool:
    """Publish the usable slots; returns True (and bumps the version) when they changed."""
    if usable_slots(client) == capacity:
        return False
    pipe = client.pipeline()
    pipe.delete(keys.USABLE_SLOTS)
    if capacity:
        pipe.hset(keys.USABLE_SLOTS, mapping=capacity)
    pipe.incr(keys.USABLE_SLOTS_VERSION)
    pipe.execute()
    return True


def drop_slots_of(client: redis.Redis, api_key: str) -> None:
    """Take an account's slots out of use at once (its token was rejected)."""
    gone = [slot for slot in usable_slots(client) if slot.rsplit(":", 1)[0] == api_key]
    if gone:
        client.hdel(keys.USABLE_SLOTS, *gone)
        client.incr(keys.USABLE_SLOTS_VERSION)


def rebalance(client: redis.Redis, watchlist: dict[int, str], grace_secs: float, force: bool = False) -> bool:
    """Recompute the assignment if its inputs moved; True if this call wrote a new one."""
    inputs = f"{demand_version(client)}:{int(client.get(keys.USABLE_SLOTS_VERSION) or 0)}"
    now = time.time()
    last_inputs, next_release = client.mget(keys.ASSIGNMENT_INPUTS, keys.ASSIGNMENT_NEXT_RELEASE)
    release_due = next_release is not None and now >= float(next_release)
    if not force and not release_due and last_inputs == inputs:
        return False
    if not client.set(keys.ASSIGNMENT_LOCK, "1", nx=True, px=LOCK_MS):
        return False
    try:
        previous = load(client)
        desired = merge(read_demand(client), watchlist)
        current = assign(previous, desired, usable_slots(client), now, grace_secs)
        _write(client, previous, current, inputs, grace_secs)
        return True
    finally:
        client.delete(keys.ASSIGNMENT_LOCK)


def _write(client: redis.Redis, previous: Assignment, current: Assignment, inputs: str, grace_secs: float) -> None:
    pipe = client.pipeline()
    changed = False
    for token in set(previous.slots) | set(current.slots):
        old = (previous.slots.get(token), previous.modes.get(token))
        new = (current.slots.get(token), current.modes.get(token))
        if old == new:
            continue
        changed = True
        if old[0] and old[0] != new[0]:
            pipe.hdel(keys.slot_tokens(old[0]), token)
        if new[0]:
            pipe.hset(keys.ASSIGNED_SLOT, token, new[0])
            pipe.hset(keys.ASSIGNED_MODE, token, new[1])
            pipe.hset(keys.slot_tokens(new[0]), token, new[1])
        else:
            pipe.hdel(keys.ASSIGNED_SLOT, token)
            pipe.hdel(keys.ASSIGNED_MODE, token)
    pipe.delete(keys.ASSIGNED_IDLE, keys.ASSIGNMENT_NEXT_RELEASE)
    if current.idle_since:
        pipe.hset(keys.ASSIGNED_IDLE, mapping=current.idle_since)
        pipe.set(keys.ASSIGNMENT_NEXT_RELEASE, min(current.idle_since.values()) + grace_secs)
    pipe.delete(keys.ASSIGNMENT_OVERFLOW)
    if current.overflow:
        pipe.sadd(keys.ASSIGNMENT_OVERFLOW, *current.overflow)
    pipe.set(keys.ASSIGNMENT_INPUTS, inputs)
    if changed:
        pipe.incr(keys.ASSIGNMENT_VERSION)
    pipe.execute()


def overflow(client: redis.Redis) -> tuple[int, set[int]]:
    """The wanted tokens the latest assignment found no room for, and the demand version that
    assignment was computed from (it saw every demand published up to that version)."""
    pipe = client.pipeline()  # one transaction: the set and the version of the same assignment
    pipe.get(keys.ASSIGNMENT_INPUTS)
    pipe.smembers(keys.ASSIGNMENT_OVERFLOW)
    inputs, tokens = pipe.execute()
    seen = int(inputs.split(":", 1)[0]) if inputs else 0
    return seen, {int(token) for token in tokens}


def assignment_version(client: redis.Redis) -> int:
    return int(client.get(keys.ASSIGNMENT_VERSION) or 0)


def tokens_of(client: redis.Redis, slot: str) -> dict[int, str]:
    """What `slot`'s shard must stream: token -> mode."""
    return {int(token): mode for token, mode in client.hgetall(keys.slot_tokens(slot)).items()}


def capacity(client: redis.Redis) -> tuple[int, int]:
    """(tokens the usable slots can hold, tokens assigned now) across the cluster."""
    return sum(usable_slots(client).values()), client.hlen(keys.ASSIGNED_SLOT)


def admissible(client: redis.Redis, tokens: list[int]) -> set[int]:
    """The tokens a new subscription may take without exceeding the pool's capacity: those
    already streamed (or wanted) and as many others as there is free room for. Everything is
    admissible before the supervisor has first published the pool (capacity unknown yet)."""
    if not tokens or not client.exists(keys.USABLE_SLOTS_VERSION):
        return set(tokens)
    total, used = capacity(client)
    assigned = client.hmget(keys.ASSIGNED_SLOT, tokens)
    fits = {token for token, slot in zip(tokens, assigned, strict=True) if slot}
    room = total - used
    for token in tokens:
        if token not in fits and room > 0:
            fits.add(token)
            room -= 1
    return fits
