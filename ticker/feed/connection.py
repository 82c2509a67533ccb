"""One Kite ticker WebSocket connection: the transport a shard streams through.

Not `KiteTicker`: its Twisted reactor is one per process and cannot be restarted, and a shard
needs to interleave lease renewal, demand polling and silence detection with reading frames
on one thread. A blocking websocket-client connection with a short read timeout does all of
that in one plain loop. `KiteTicker`'s parser remains the oracle the lean parser is tested
against (tests/feed/test_protocol.py), and `KiteTicker` itself is the proof that the
simulator speaks Kite's protocol (tests/sim/).
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

import websocket

CONNECT_TIMEOUT_SECS = 10
READ_POLL_SECS = 0.2  # how long a read may block before the shard does its housekeeping


class TokenRejected(Exception):
    """Kite refused the access token (HTTP 403 on the upgrade): retrying will not help."""


class KiteConnection:
    """A ticker connection for one API key; `read` returns a frame or None after a poll."""

    def __init__(self, ticker_root: str, api_key: str, access_token: str):
        query = urlencode({"api_key": api_key, "access_token": access_token})
        self.url = f"{ticker_root}?{query}"
        self.ws: websocket.WebSocket | None = None

    def open(self) -> None:
        try:
            self.ws = websocket.create_connection(self.url, timeout=CONNECT_TIMEOUT_SECS)
        except websocket.WebSocketBadStatusException as exc:
            if exc.status_code in (401, 403):
                raise TokenRejected(f"Kite refused the access token (HTTP {exc.status_code})") from exc
            raise
        self.ws.settimeout(READ_POLL_SECS)

    def send(self, action: str, value: object) -> None:
        """Send a Kite control message: subscribe, unsubscribe or mode."""
        assert self.ws is not None
        self.ws.send(json.dumps({"a": action, "v": value}))

    def read(self) -> tuple[int, bytes] | None:
        """(opcode, payload) of the next data frame, or None if nothing came within the poll."""
        assert self.ws is not None
        try:
            opcode, data = self.ws.recv_data()
        except websocket.WebSocketTimeoutException:
            return None
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            raise websocket.WebSocketConnectionClosedException("Kite closed the connection")
        return opcode, data

    def close(self) -> None:
        if self.ws is not None:
            try:
                self.ws.close(timeout=1)
            except Exception:  # noqa: BLE001  (closing a broken socket may fail any way it likes)
                pass
            self.ws = None


def is_binary(opcode: int) -> bool:
    return opcode == websocket.ABNF.OPCODE_BINARY
