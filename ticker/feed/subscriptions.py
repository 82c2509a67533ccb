"""What a shard must change on its Kite connection to match demand (pure logic, no I/O)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field


@dataclass
class Changes:
    """Incremental commands for one Kite connection: nothing is resubscribed needlessly."""

    subscribe: dict[str, list[int]] = field(default_factory=dict)  # mode -> new tokens
    set_mode: dict[str, list[int]] = field(default_factory=dict)  # mode -> tokens changing mode
    unsubscribe: list[int] = field(default_factory=list)
    over_capacity: list[int] = field(default_factory=list)  # wanted, but no room on this slot

    def __bool__(self) -> bool:
        return bool(self.subscribe or self.set_mode or self.unsubscribe)


def plan(
    current: dict[int, str],
    desired: dict[int, str],
    unwanted_since: dict[int, float],
    now: float,
    grace_secs: float,
    capacity: int,
) -> Changes:
    """Compare what the connection streams (`current`) with what is wanted (`desired`).

    A token nobody wants any more is unsubscribed only after `grace_secs`, so a client that
    reconnects or flips between screens does not churn the upstream connection;
    `unwanted_since` (token -> when it became unwanted) is updated in place. New tokens are
    taken in token order until the slot's `capacity` is reached.
    """
    changes = Changes()
    subscribe, set_mode = defaultdict(list), defaultdict(list)
    for token in list(unwanted_since):
        if token in desired:
            del unwanted_since[token]
    for token, mode in current.items():
        if token not in desired:
            since = unwanted_since.setdefault(token, now)
            if now - since >= grace_secs:
                changes.unsubscribe.append(token)
        elif desired[token] != mode:
            set_mode[desired[token]].append(token)
    room = capacity - len(current) + len(changes.unsubscribe)
    for token in sorted(set(desired) - set(current)):
        if room > 0:
            subscribe[desired[token]].append(token)
            room -= 1
        else:
            changes.over_capacity.append(token)
    changes.subscribe, changes.set_mode = dict(subscribe), dict(set_mode)
    return changes


def apply(current: dict[int, str], changes: Changes, unwanted_since: dict[int, float]) -> None:
    """Record on `current` what `changes` did to the connection."""
    for mode, tokens in (*changes.subscribe.items(), *changes.set_mode.items()):
        current.update(dict.fromkeys(tokens, mode))
    for token in changes.unsubscribe:
        current.pop(token, None)
        unwanted_since.pop(token, None)
