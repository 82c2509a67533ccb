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
    pipe.smembers(keys.ASSIGNMENT_WAITING)
    slots, modes, idle, waiting = pipe.execute()
    return Assignment(
        slots={int(t): s for t, s in slots.items()},
        modes={int(t): m for t, m in modes.items()},
        idle_since={int(t): float(since) for t, since in idle.items()},
        waiting=sorted(int(t) for t in waiting),
    )


def _slots(client: redis.Redis, key: str) -> dict[str, int]:
    return {slot: int(cap) for slot, cap in sorted(client.hgetall(key).items())}


def usable_slots(client: redis.Redis) -> dict[str, int]:
    """Slot -> capacity for accounts whose token is valid, in slot order."""
    return _slots(client, keys.USABLE_SLOTS)


def pool_slots(client: redis.Redis) -> dict[str, int]:
    """Slot -> capacity for every enabled account, usable now or not, in slot order."""
    return _slots(client, keys.POOL_SLOTS)


def accounts_down(client: redis.Redis) -> dict[str, str]:
    """API key -> the reason its slots cannot stream now (a client-facing reason code)."""
    return client.hgetall(keys.ACCOUNTS_DOWN)


def set_pool(client: redis.Redis, usable: dict[str, int], pool: dict[str, int], down: dict[str, str]) -> bool:
    """Publish the pool: its usable slots, all its slots, and why accounts are down; returns
    True (and bumps the version) when any of them changed."""
    if (usable_slots(client), pool_slots(client), accounts_down(client)) == (usable, pool, down):
        return False
    pipe = client.pipeline()
    for key, mapping in ((keys.USABLE_SLOTS, usable), (keys.POOL_SLOTS, pool), (keys.ACCOUNTS_DOWN, down)):
        pipe.delete(key)
        if mapping:
            pipe.hset(key, mapping=mapping)
    pipe.incr(keys.USABLE_SLOTS_VERSION)
    pipe.execute()
    return True


def drop_slots_of(client: redis.Redis, api_key: str, reason: str) -> None:
    """Take an account's slots out of use at once (its token was rejected); they stay in the
    pool, and its tokens wait for them (or move to other accounts' free room)."""
    gone = [slot for slot in usable_slots(client) if slot.rsplit(":", 1)[0] == api_key]
    pipe = client.pipeline()
    if gone:
        pipe.hdel(keys.USABLE_SLOTS, *gone)
    pipe.hset(keys.ACCOUNTS_DOWN, api_key, reason)
    pipe.incr(keys.USABLE_SLOTS_VERSION)
    pipe.execute()


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
        usable = usable_slots(client)
        unusable = max(0, sum(pool_slots(client).values()) - sum(usable.values()))
        current = assign(previous, desired, usable, now, grace_secs, unusable)
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
    pipe.delete(keys.ASSIGNMENT_OVERFLOW, keys.ASSIGNMENT_WAITING)
    if current.overflow:
        pipe.sadd(keys.ASSIGNMENT_OVERFLOW, *current.overflow)
    if current.waiting:
        pipe.sadd(keys.ASSIGNMENT_WAITING, *current.waiting)
    if set(previous.waiting) != set(current.waiting):
        changed = True
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
    """(tokens the pool's slots can hold, usable now or not; tokens assigned or waiting now)
    across the cluster."""
    pipe = client.pipeline(transaction=False)
    pipe.hvals(keys.POOL_SLOTS)
    pipe.hlen(keys.ASSIGNED_SLOT)
    pipe.scard(keys.ASSIGNMENT_WAITING)
    pool, assigned, waiting = pipe.execute()
    return sum(int(cap) for cap in pool), assigned + waiting


def admissible(client: redis.Redis, tokens: list[int]) -> set[int]:
    """The tokens a new subscription may take without exceeding the pool's capacity: those
    already streamed (or waiting for a slot) and as many others as there is free room for. Room
    that cannot stream now (an expired token) counts: such tokens wait and are told why.
    Everything is admissible before the supervisor has first published the pool."""
    if not tokens or not client.exists(keys.USABLE_SLOTS_VERSION):
        return set(tokens)
    total, used = capacity(client)
    pipe = client.pipeline(transaction=False)
    pipe.hmget(keys.ASSIGNED_SLOT, tokens)
    pipe.smismember(keys.ASSIGNMENT_WAITING, tokens)
    assigned, waiting = pipe.execute()
    fits = {token for token, slot, waits in zip(tokens, assigned, waiting, strict=True) if slot or waits}
    room = total - used
    for token in tokens:
        if token not in fits and room > 0:
            fits.add(token)
            room -= 1
    return fits
