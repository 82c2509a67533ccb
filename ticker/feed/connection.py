"""One Kite ticker WebSocket connection: the transport a shard streams through.

Not `KiteTicker`: its Twisted reactor is one per process and cannot be restarted, and a shard
needs to interleave lease renewal, demand polling and silence detection with reading frames
on one thread. A blocking websocket-client connection with a short read timeout does all of
that in one plain loop. `KiteTicker`'s parser remains the oracle the lean parser is tested
against (tests/feed/test_protocol.py), and `KiteTicker` itself is the proof that the
simulator speaks Kite's protocol (tests/sim/).

Every step of opening a connection (TCP connect, TLS, the WebSocket handshake) finishes
before a deadline the caller gives (what is left of its lease), and the socket exists, for
`abort()` to shut down from another thread, from the first of them on. websocket-client
opens the TCP and TLS connection itself only when given no socket; here it is given one, so
no step is outside that deadline and `abort()` (the lease watchdog) can stop any of them.

Reading never gives up on the stream for one bad frame: a frame that breaks the WebSocket
protocol (a reserved opcode, RSV bits, a stray continuation) has been read whole by the time
websocket-client refuses it, so `read` reports it (`UnreadableFrame`) and the next read
starts at the next frame. UTF-8 is not checked here (the shard decodes text frames and
counts what does not decode).
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from urllib.parse import urlencode, urlsplit

import websocket

CONNECT_TIMEOUT_SECS = 10  # the longest a connect may take, lease permitting
READ_POLL_SECS = 0.2  # how long a read may block before the shard does its housekeeping
CLOSE_TIMEOUT_SECS = 1  # waiting for Kite's answer to our close frame
SLOT_HEADER = "X-Ticker-Slot"  # names the connection's slot (Kite ignores it; the simulator counts by it)
CLOSE_NO_STATUS = 1005  # RFC 6455: a close frame without a status code


class TokenRejected(Exception):
    """Kite refused the access token (HTTP 401/403 on the upgrade): retrying will not help."""


class UpstreamClosed(websocket.WebSocketConnectionClosedException):
    """Kite closed the connection with a close frame: its `code` and `reason`."""

    def __init__(self, code: int, reason: str):
        super().__init__(f"Kite closed the connection ({code} {reason})".strip())
        self.code = code
        self.reason = reason

    @classmethod
    def from_payload(cls, payload: bytes) -> UpstreamClosed:
        if len(payload) < 2:
            return cls(CLOSE_NO_STATUS, "")
        return cls(int.from_bytes(payload[:2], "big"), payload[2:].decode("utf-8", "replace"))


class UnreadableFrame(Exception):
    """Kite sent a frame that breaks the WebSocket protocol; it was skipped whole."""


class KiteConnection:
    """A ticker connection for one API key; `read` returns a frame or None after a poll.

    `abort()` may be called from any thread at any time, before, during or after `open`.
    """

    def __init__(self, ticker_root: str, api_key: str, access_token: str, slot: str = ""):
        query = urlencode({"api_key": api_key, "access_token": access_token})
        self.url = f"{ticker_root}?{query}"
        self.headers = [f"{SLOT_HEADER}: {slot}"] if slot else []
        self.ws: websocket.WebSocket | None = None
        self._sock: socket.socket | None = None
        self._aborted = False
        self._lock = threading.Lock()

    def open(self, deadline: float) -> None:
        """Connect and upgrade before `deadline` (time.monotonic()); TimeoutError if the time
        runs out, TokenRejected if Kite refuses the token, OSError or WebSocketException else."""
        parts = urlsplit(self.url)
        secure = parts.scheme == "wss"
        host, port = parts.hostname or "", parts.port or (443 if secure else 80)
        sock = self._connect_tcp(host, port, deadline)
        if secure:
            sock.settimeout(_left(deadline))
            self._hold(ssl.create_default_context().wrap_socket(sock, server_hostname=host))
        ws = websocket.WebSocket(skip_utf8_validation=True)
        self._held().settimeout(_left(deadline))
        try:
            ws.connect(self.url, socket=self._held(), timeout=_left(deadline), header=self.headers)
        except websocket.WebSocketBadStatusException as exc:
            if exc.status_code in (401, 403):
                raise TokenRejected(f"Kite refused the access token (HTTP {exc.status_code})") from exc
            raise
        ws.settimeout(READ_POLL_SECS)
        self.ws = ws

    def _connect_tcp(self, host: str, port: int, deadline: float) -> socket.socket:
        error: OSError = OSError(f"no address for {host}")
        for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
            sock = self._hold(socket.socket(family, kind, proto))
            for option in websocket.DEFAULT_SOCKET_OPTION:  # TCP_NODELAY and keepalive, as websocket-client sets
                sock.setsockopt(*option)
            try:
                sock.settimeout(_left(deadline))
                sock.connect(address)
                return self._held()
            except OSError as exc:
                error = exc
                sock.close()
        raise error

    def _hold(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            if self._aborted:
                sock.close()
                raise ConnectionAbortedError("the connection was aborted while it opened")
            self._sock = sock
        return sock

    def _held(self) -> socket.socket:
        with self._lock:
            if self._aborted or self._sock is None:
                raise ConnectionAbortedError("the connection was aborted while it opened")
            return self._sock

    def abort(self) -> bool:
        """Shut the socket down (any thread): a blocked connect, handshake or read ends at
        once. True if there was a socket to shut."""
        with self._lock:
            self._aborted = True
            if self._sock is None:
                return False
            try:
                # The plain socket's shutdown, even under TLS: SSLSocket.shutdown would also
                # drop its TLS state under the reading thread's feet.
                socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
            except OSError:  # not connected yet, or already closed
                pass
            return True

    def send(self, action: str, value: object) -> None:
        """Send a Kite control message: subscribe, unsubscribe or mode."""
        assert self.ws is not None
        self.ws.send(json.dumps({"a": action, "v": value}))

    def read(self) -> tuple[int, bytes] | None:
        """(opcode, payload) of the next data frame, or None if nothing came within the poll.
        Raises UnreadableFrame for a frame that breaks the protocol (the stream goes on),
        UpstreamClosed for Kite's close frame, and websocket-client's exceptions or OSError
        when the connection is gone."""
        assert self.ws is not None
        try:
            opcode, data = self.ws.recv_data()
        except websocket.WebSocketTimeoutException:
            return None
        except websocket.WebSocketProtocolException as exc:
            raise UnreadableFrame(str(exc)) from exc
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            raise UpstreamClosed.from_payload(data)
        return opcode, data

    def close(self) -> None:
        with self._lock:
            ws, sock, self.ws, self._sock = self.ws, self._sock, None, None
        try:
            if ws is not None:
                ws.close(timeout=CLOSE_TIMEOUT_SECS)
            elif sock is not None:
                sock.close()
        except Exception:  # noqa: BLE001  (closing a broken socket may fail any way it likes)
            pass


def _left(deadline: float) -> float:
    """Seconds until `deadline`; TimeoutError if none are left."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("no time left to open the connection")
    return left


def is_binary(opcode: int) -> bool:
    return opcode == websocket.ABNF.OPCODE_BINARY
