"""Which upstream connection slot streams which token (pure logic, no I/O).

Slots are (API key, connection number) pairs, each holding up to its capacity of tokens.
Assignment is sticky: a token stays on its slot while the slot is usable, so a new subscriber
never makes Kite connections churn. New tokens fill slots first-fit in slot order, so the
fewest connections are open. A token nobody wants stays assigned (idle) for a grace period
before it is released; idle tokens are the first evicted when room is short.

Room that vanished is not room that is full. A slot whose account cannot connect now (its
access token expired, the morning before a login) still belongs to the pool: wanted tokens
that would have fitted in it wait (`waiting`) and are placed as soon as a slot can take them;
only tokens beyond the pool's whole capacity overflow (`overflow`), which clients hear as
`capacity_exhausted`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def slot_name(api_key: str, number: int) -> str:
    return f"{api_key}:{number}"


def slot_api_key(slot: str) -> str:
    return slot.rsplit(":", 1)[0]


def slots_for(api_keys: list[str], connections_per_key: int) -> list[str]:
    """Every slot of the given accounts, in a stable order."""
    return [slot_name(key, n) for key in api_keys for n in range(connections_per_key)]


@dataclass
class Assignment:
    """token -> slot and token -> mode for everything streamed; `idle_since` for tokens nobody
    wants any more; `waiting` for wanted tokens the pool has room for but no usable slot can
    take now; `overflow` for wanted tokens beyond the pool's capacity."""

    slots: dict[int, str] = field(default_factory=dict)
    modes: dict[int, str] = field(default_factory=dict)
    idle_since: dict[int, float] = field(default_factory=dict)
    waiting: list[int] = field(default_factory=list)
    overflow: list[int] = field(default_factory=list)

    def tokens_of(self, slot: str) -> dict[int, str]:
        return {token: self.modes[token] for token, owner in self.slots.items() if owner == slot}

    def load(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for slot in self.slots.values():
            counts[slot] = counts.get(slot, 0) + 1
        return counts


def assign(
    previous: Assignment,
    desired: dict[int, str],
    capacity: dict[str, int],
    now: float,
    grace_secs: float,
    unusable: int = 0,
) -> Assignment:
    """The next assignment. `capacity` lists the usable slots (valid token, in order) with how
    many tokens each holds; tokens on a slot that is no longer usable are placed again.
    `unusable` is the capacity of the pool's slots that cannot stream now: as many wanted tokens
    as it holds wait for them instead of overflowing, those that waited (or streamed) before
    first."""
    result = Assignment()
    for token, slot in previous.slots.items():
        if slot not in capacity:
            continue
        if token in desired:
            result.slots[token], result.modes[token] = slot, desired[token]
        else:
            since = previous.idle_since.get(token, now)
            if now - since < grace_secs:
                result.slots[token], result.modes[token] = slot, previous.modes[token]
                result.idle_since[token] = since
    # Tokens admitted before (they streamed, or waited for a slot) are placed before new ones.
    admitted = set(previous.slots) | set(previous.waiting)
    unplaced = sorted(set(desired) - set(result.slots), key=lambda token: (token not in admitted, token))
    _place_new(result, desired, capacity, unplaced)
    result.waiting, result.overflow = result.overflow[:unusable], result.overflow[unusable:]
    return result


def _place_new(result: Assignment, desired: dict[int, str], capacity: dict[str, int], unplaced: list[int]) -> None:
    load = result.load()
    free = {slot: cap - load.get(slot, 0) for slot, cap in capacity.items()}
    # Oldest idle tokens go first when a wanted token needs their room.
    evictable = sorted(result.idle_since, key=result.idle_since.__getitem__)
    for token in unplaced:
        slot = next((s for s, room in free.items() if room > 0), None)
        if slot is None and evictable:
            evicted = evictable.pop(0)
            slot = result.slots.pop(evicted)
            del result.modes[evicted], result.idle_since[evicted]
            free[slot] += 1
        if slot is None:
            result.overflow.append(token)
            continue
        result.slots[token], result.modes[token] = slot, desired[token]
        free[slot] -= 1
