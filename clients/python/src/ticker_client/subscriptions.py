"""The subscriptions a client wants against those its connection holds (pure logic, no I/O).

A client changes what it wants at any moment (`subscribe`, `set_mode`, `unsubscribe`), from any
thread, connected or not. The connection is brought to that state one request at a time, each
sent after the previous one's ack: the server may handle a connection's messages concurrently, so
`subscribe` then `set_mode` sent back to back could land in either order. After a reconnect the
connection holds nothing, and the same diff resubscribes every token in its mode.
"""

from __future__ import annotations

import threading
from typing import Any

from .policy import DROP_TOKEN_CODES

DEFAULT_MAX_TOKENS_PER_REQUEST = 1000  # the server's default; `connected.limits` says the real one

Request = tuple[str, dict[str, Any]]  # (event, payload)


class Subscriptions:
    """`wanted` (token → mode, what the client asked for) and `held` (what the connection holds)."""

    def __init__(self) -> None:
        self.wanted: dict[int, str] = {}
        self.held: dict[int, str] = {}
        self.max_tokens_per_request = DEFAULT_MAX_TOKENS_PER_REQUEST
        self._lock = threading.Lock()

    def want(self, tokens, mode: str) -> None:
        with self._lock:
            for token in tokens:
                self.wanted[int(token)] = mode

    def drop(self, tokens) -> None:
        with self._lock:
            for token in tokens:
                self.wanted.pop(int(token), None)

    def connection_lost(self) -> None:
        """A new connection holds nothing until it subscribes."""
        with self._lock:
            self.held.clear()

    def next_request(self) -> Request | None:
        """The next message that brings the connection closer to what is wanted, or None."""
        with self._lock:
            gone = [token for token in self.held if token not in self.wanted]
            if gone:
                return "unsubscribe", {"tokens": gone[: self.max_tokens_per_request]}
            by_mode: dict[str, list[int]] = {}
            for token, mode in self.wanted.items():
                if self.held.get(token) != mode:
                    by_mode.setdefault(mode, []).append(token)
            for mode, tokens in by_mode.items():
                return "subscribe", {"tokens": tokens[: self.max_tokens_per_request], "mode": mode}
        return None

    def acked(self, event: str, payload: dict[str, Any], reply: Any) -> list[tuple[str, str]]:
        """Record the server's `reply` to a request; returns `(code, message)` for each refusal.
        A refused token is no longer wanted (asking again would be refused again), except when
        the whole request was refused for now (`{error}`: the caller retries after a backoff)."""
        if not isinstance(reply, dict) or "error" in reply:
            return []
        with self._lock:
            if event == "unsubscribe":
                for token in payload["tokens"]:
                    self.held.pop(token, None)
                return []
            for token in reply.get("tokens", ()):
                self.held[token] = reply.get("mode", payload["mode"])
            answered = set(reply.get("tokens", ())) | {r.get("token") for r in reply.get("rejected", ())}
            for token in payload["tokens"]:
                if token not in answered:  # neither held nor refused: asking again would loop
                    self.wanted.pop(token, None)
            refusals = []
            for rejected in reply.get("rejected", ()):
                token = rejected.get("token")
                if rejected.get("code") in DROP_TOKEN_CODES and isinstance(token, int):
                    self.wanted.pop(token, None)
                refusals.append((rejected.get("code"), f"{token}: {rejected.get('message')}"))
            return refusals

    def refused(self, payload: dict[str, Any]) -> None:
        """A request refused for good as a whole (a malformed one): stop wanting its tokens."""
        self.drop(payload["tokens"])

    def withdrawn(self, tokens) -> None:
        """The server ended these subscriptions (`unsubscribed` with a `reason`)."""
        with self._lock:
            for token in tokens:
                self.held.pop(token, None)
                self.wanted.pop(token, None)
