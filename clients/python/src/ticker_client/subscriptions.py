"""The subscriptions a client wants against those its connection holds (pure logic, no I/O).

A client changes what it wants at any moment (`subscribe`, `set_mode`, `unsubscribe`), from any
thread, connected or not. The connection is brought to that state one request at a time, each
sent after the previous one's ack: the server may handle a connection's messages concurrently, so
`subscribe` then `set_mode` sent back to back could land in either order. After a reconnect the
connection holds nothing, and the same diff resubscribes every token in its mode.

A token may also want live candles of some intervals (docs/API.md, "Live candles"). The service
sets a token's candle intervals anew with each `subscribe` of it, so every `subscribe` of a token
carries the intervals it wants: changing its mode keeps its candles.
"""

from __future__ import annotations

import threading
from typing import Any

from .policy import DROP_TOKEN_CODES

DEFAULT_MAX_TOKENS_PER_REQUEST = 1000  # the server's default; `connected.limits` says the real one

Request = tuple[str, dict[str, Any]]  # (event, payload)


class Subscriptions:
    """`wanted` (token → mode, what the client asked for) and `held` (what the connection holds);
    `wanted_candles` and `held_candles` (token → its candle intervals, sorted; none: no entry)."""

    def __init__(self) -> None:
        self.wanted: dict[int, str] = {}
        self.held: dict[int, str] = {}
        self.wanted_candles: dict[int, tuple[str, ...]] = {}
        self.held_candles: dict[int, tuple[str, ...]] = {}
        self.max_tokens_per_request = DEFAULT_MAX_TOKENS_PER_REQUEST
        self._lock = threading.Lock()

    def want(self, tokens, mode: str) -> None:
        with self._lock:
            for token in tokens:
                self.wanted[int(token)] = mode

    def want_candles(self, tokens, intervals, mode: str) -> None:
        """`tokens` want candles of `intervals` (none: no candles); a token not wanted yet is
        wanted in `mode`."""
        chosen = tuple(sorted(set(intervals)))
        with self._lock:
            for token in map(int, tokens):
                self.wanted.setdefault(token, mode)
                if chosen:
                    self.wanted_candles[token] = chosen
                else:
                    self.wanted_candles.pop(token, None)

    def drop(self, tokens) -> None:
        with self._lock:
            for token in tokens:
                self.wanted.pop(int(token), None)
                self.wanted_candles.pop(int(token), None)

    def connection_lost(self) -> None:
        """A new connection holds nothing until it subscribes."""
        with self._lock:
            self.held.clear()
            self.held_candles.clear()

    def next_request(self) -> Request | None:
        """The next message that brings the connection closer to what is wanted, or None."""
        with self._lock:
            gone = [token for token in self.held if token not in self.wanted]
            if gone:
                return "unsubscribe", {"tokens": gone[: self.max_tokens_per_request]}
            by_kind: dict[tuple[str, tuple[str, ...]], list[int]] = {}
            for token, mode in self.wanted.items():
                candles = self.wanted_candles.get(token, ())
                if self.held.get(token) != mode or self.held_candles.get(token, ()) != candles:
                    by_kind.setdefault((mode, candles), []).append(token)
            for (mode, candles), tokens in by_kind.items():
                payload: dict[str, Any] = {"tokens": tokens[: self.max_tokens_per_request], "mode": mode}
                if candles:
                    payload["candles"] = list(candles)
                return "subscribe", payload
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
                    self.held_candles.pop(token, None)
                return []
            candles = tuple(sorted(payload.get("candles", ())))
            for token in reply.get("tokens", ()):
                self.held[token] = reply.get("mode", payload["mode"])
                if candles:
                    self.held_candles[token] = candles
                else:
                    self.held_candles.pop(token, None)
            answered = set(reply.get("tokens", ())) | {r.get("token") for r in reply.get("rejected", ())}
            for token in payload["tokens"]:
                if token not in answered:  # neither held nor refused: asking again would loop
                    self.wanted.pop(token, None)
                    self.wanted_candles.pop(token, None)
            refusals = []
            for rejected in reply.get("rejected", ()):
                token = rejected.get("token")
                if rejected.get("code") in DROP_TOKEN_CODES and isinstance(token, int):
                    self.wanted.pop(token, None)
                    self.wanted_candles.pop(token, None)
                refusals.append((rejected.get("code"), f"{token}: {rejected.get('message')}"))
            return refusals

    def refused(self, payload: dict[str, Any]) -> None:
        """A request refused for good as a whole (a malformed one): stop wanting its tokens; or,
        when it asked for candles (an interval the service does not build), only their candles,
        so their ticks are asked for again without them."""
        if payload.get("candles"):
            with self._lock:
                for token in payload["tokens"]:
                    self.wanted_candles.pop(token, None)
            return
        self.drop(payload["tokens"])

    def withdrawn(self, tokens) -> None:
        """The server ended these subscriptions (`unsubscribed` with a `reason`)."""
        with self._lock:
            for token in tokens:
                self.held.pop(token, None)
                self.wanted.pop(token, None)
                self.held_candles.pop(token, None)
                self.wanted_candles.pop(token, None)
