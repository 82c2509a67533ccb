"""What a shard must change on its Kite connection to match its slot's assignment (pure
logic, no I/O). The grace period and the slot's capacity are the assigner's business
(ticker.feed.sharding); this only turns "streams X, must stream Y" into Kite's commands."""

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


def plan(current: dict[int, str], wanted: dict[int, str], capacity: int) -> Changes:
    """Compare what the connection streams (`current`) with what it must (`wanted`). New
    tokens are taken in token order up to `capacity`, a guard: the assigner never asks for more."""
    changes = Changes(unsubscribe=[token for token in current if token not in wanted])
    subscribe, set_mode = defaultdict(list), defaultdict(list)
    for token, mode in current.items():
        if token in wanted and wanted[token] != mode:
            set_mode[wanted[token]].append(token)
    room = capacity - len(current) + len(changes.unsubscribe)
    for token in sorted(set(wanted) - set(current)):
        if room > 0:
            subscribe[wanted[token]].append(token)
            room -= 1
        else:
            changes.over_capacity.append(token)
    changes.subscribe, changes.set_mode = dict(subscribe), dict(set_mode)
    return changes


def apply(current: dict[int, str], changes: Changes) -> None:
    """Record on `current` what `changes` did to the connection."""
    for mode, tokens in (*changes.subscribe.items(), *changes.set_mode.items()):
        current.update(dict.fromkeys(tokens, mode))
    for token in changes.unsubscribe:
        current.pop(token, None)
