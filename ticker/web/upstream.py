"""What a replica tells its clients about the upstream, token by token (pure logic, no I/O).

Each second the replica learns, for every token its clients hold, whether its ticks can flow
and if not why (`ticker.bus.upstream`). A token that stays down for `DOWN_NOTICE_SECS` is
announced down with its reason (a reconnect quicker than that goes unannounced: nothing was
missed that the next tick does not repair); a token announced down is announced restored as
soon as its ticks can flow again. Each change is announced once, not every second.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DOWN_NOTICE_SECS = 2.0  # down this long and its clients are told


@dataclass
class Changes:
    """What to announce: reason -> tokens that went down for it; tokens that came back."""

    down: dict[str, list[int]] = field(default_factory=dict)
    restored: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.down or self.restored)


class UpstreamNotices:
    """The announced state of each token (`announced`: token -> reason, for tokens announced
    down) and the downs not yet announced (`pending`: token -> (reason, since))."""

    def __init__(self, down_notice_secs: float = DOWN_NOTICE_SECS):
        self.down_notice_secs = down_notice_secs
        self.announced: dict[int, str] = {}
        self.pending: dict[int, tuple[str, float]] = {}

    def update(self, states: dict[int, str | None], now: float) -> Changes:
        """Take the states of every token held now (token -> None when it streams, else the
        reason); returns what changed enough to announce. Tokens not in `states` are no
        longer held by anyone here and are forgotten."""
        changes = Changes()
        for token in [t for t in self.announced if t not in states]:
            del self.announced[token]
        for token in [t for t in self.pending if t not in states]:
            del self.pending[token]
        for token, reason in states.items():
            if reason is None:
                self.pending.pop(token, None)
                if self.announced.pop(token, None) is not None:
                    changes.restored.append(token)
            elif self.announced.get(token) != reason:
                self._going_down(token, reason, now, changes)
            else:
                self.pending.pop(token, None)
        return changes

    def _going_down(self, token: int, reason: str, now: float, changes: Changes) -> None:
        pending = self.pending.get(token)
        if pending is None or pending[0] != reason:
            since = pending[1] if pending is not None else now  # a new reason, the same outage
            self.pending[token] = pending = (reason, since)
        if now - pending[1] >= self.down_notice_secs:
            del self.pending[token]
            self.announced[token] = reason
            changes.down.setdefault(reason, []).append(token)

    def down_among(self, tokens: list[int]) -> dict[str, list[int]]:
        """reason -> those of `tokens` announced down now (for a client that just subscribed)."""
        down: dict[str, list[int]] = {}
        for token in tokens:
            reason = self.announced.get(token)
            if reason is not None:
                down.setdefault(reason, []).append(token)
        return down
