"""Tick frames written straight to a client's WebSocket, without a writer greenlet per frame.

Engine.IO sends every packet through a per-connection queue that a writer greenlet drains,
one switch, one timer and one WebSocket library call per packet. For the tick stream that
path cost more than everything else the replica does (BENCHMARKS.md, Fan-out), so the
fan-out writes a tick frame itself: one `send` on the non-blocking socket, which either takes
the whole frame at once (the usual case: the kernel buffer has room) or takes part of it,
and then a greenlet finishes the frame while the client counts as busy.

Frames never interleave: a write either goes out whole in one `send` (nothing yields in
between) or holds the connection's send lock until it is finished, and every other writer
either waits for that lock or, through `enqueue`, leaves its frame to be sent right after. The
fan-out writes only when the lock is free and nothing is queued, so a tick frame never
overtakes a packet sent before it (an ack, an error).
Connections that negotiated compression keep the library's path: their frames must go
through its deflate state.
"""

from __future__ import annotations

import collections
import errno
from collections.abc import Callable
from typing import Any

# What the kernel says when a non-blocking socket's buffer is full.
_WOULD_BLOCK = {errno.EAGAIN, errno.EWOULDBLOCK}


TEXT, BINARY = 0x1, 0x2  # WebSocket opcodes


def frame(payload: bytes, opcode: int = TEXT) -> bytes:
    """An unmasked, final WebSocket frame (RFC 6455 §5.2), as a server sends it."""
    first = 0x80 | opcode
    length = len(payload)
    if length < 126:
        header = bytes((first, length))
    elif length < 65536:
        header = bytes((first, 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((first, 127)) + length.to_bytes(8, "big")
    return header + payload


def text_frame(payload: bytes) -> bytes:
    return frame(payload, TEXT)


class Wire:
    """One client's WebSocket connection as the fan-out writes to it.

    `green` is the cooperative socket (its `sendall` yields while the kernel buffer is
    full), `raw` the non-blocking OS socket under it, `lock` the connection's send lock, which
    every other writer holds too, and `spawn` starts a greenlet. `backlog` holds frames that
    came while a write was in flight; the greenlet finishing that write sends them too."""

    __slots__ = ("green", "raw", "lock", "spawn", "broken", "backlog")

    def __init__(self, green: Any, raw: Any, lock: Any, spawn: Callable[..., Any]):
        self.green = green
        self.raw = raw
        self.lock = lock
        self.spawn = spawn
        self.broken = False
        self.backlog: collections.deque[bytes] = collections.deque()

    @property
    def busy(self) -> bool:
        """A write is in flight (the client has not read what was sent before)."""
        return self.lock.locked()

    def write(self, payload: bytes) -> None:
        """Send one text frame now. The caller checked `busy` is False; if the kernel takes
        only part of the frame, a greenlet sends the rest and the wire stays busy until then."""
        self._send(text_frame(payload))

    def enqueue(self, data: bytes) -> None:
        """Send framed `data` now, or right after the write in flight: never waits, so any
        greenlet may send to any client (a control message, an ack, a ping)."""
        if self.lock.locked():
            self.backlog.append(data)
        else:
            self._send(data)

    def _send(self, data: bytes) -> None:
        try:
            sent = self.raw.send(data)
        except OSError as exc:
            if exc.errno not in _WOULD_BLOCK:
                self.broken = True  # the reader side notices the closed connection and cleans up
                return
            sent = 0
        if sent < len(data):
            self.lock.acquire()  # free (checked by the caller, and nothing ran since)
            self.spawn(self._finish, memoryview(data)[sent:])

    def _finish(self, rest: memoryview) -> None:
        try:
            self.green.sendall(rest)
            while self.backlog:
                self.green.sendall(self.backlog.popleft())
        except OSError:
            self.broken = True
            self.backlog.clear()
        finally:
            self.lock.release()


class LockedSocket:
    """The socket simple-websocket writes through (handshake replies, pongs, close frames and
    every Engine.IO packet): each write holds the wire's lock, so it never lands in the
    middle of a tick frame that is still being sent."""

    def __init__(self, green: Any, lock: Any):
        self._green = green
        self._lock = lock

    def send(self, data: bytes) -> int:
        with self._lock:
            self._green.sendall(data)
        return len(data)

    sendall = send

    def __getattr__(self, name: str) -> Any:
        return getattr(self._green, name)


def compressed(environ: dict) -> bool:
    """Whether the connection negotiated permessage-deflate (simple-websocket accepts it
    whenever the client offers it)."""
    return "permessage-deflate" in environ.get("HTTP_SEC_WEBSOCKET_EXTENSIONS", "")


def raw_socket(environ: dict) -> Any:
    """The TCP socket under a WebSocket request (eventlet or gevent), where simple-websocket
    finds it before duplicating it; also how a client that stopped reading is cut off even
    while a write to it is blocked."""
    if "eventlet.input" in environ:
        return environ["eventlet.input"].get_socket()
    wsgi_input = environ.get("wsgi.input")
    wsgi_input = getattr(wsgi_input, "rfile", wsgi_input)
    raw = getattr(wsgi_input, "raw", None)
    return getattr(raw, "_sock", None)


def gevent_websocket_class(base: type) -> type:
    """engineio's gevent WebSocket class (simple-websocket underneath), giving each
    uncompressed connection a `Wire` that the fan-out finds on the Engine.IO socket."""
    import gevent
    import gevent.lock

    def init(self: Any, handler: Callable, server: Any) -> None:
        def wired(wrapper: Any) -> Any:
            ws = wrapper.ws  # the simple-websocket server, its handshake done
            engine_socket = getattr(handler, "__self__", None)
            if engine_socket is not None and not compressed(ws.environ):
                lock = gevent.lock.Semaphore()
                green = raw_socket(ws.environ)
                if green is None:
                    green = ws.sock
                elif green is not ws.sock:
                    ws.sock.close()  # simple-websocket's duplicate: one descriptor per client is enough
                ws.sock = LockedSocket(green, lock)
                engine_socket.wire = Wire(green, green._sock, lock, gevent.spawn)
            return handler(wrapper)

        base.__init__(self, wired, server)

    return type("WiredWebSocket", (base,), {"__init__": init})


def eventlet_websocket_class(base: type) -> type:
    """engineio's eventlet WebSocket class, giving each uncompressed connection a `Wire`
    (eventlet's WebSocket already sends every frame under its own lock)."""
    import eventlet

    def init(self: Any, handler: Callable, server: Any) -> None:
        def wired(ws: Any) -> Any:
            engine_socket = getattr(handler, "__self__", None)
            if engine_socket is not None and getattr(ws, "_deflate_enc", None) is None:
                engine_socket.wire = Wire(ws.socket, ws.socket.fd, ws._sendlock, eventlet.spawn_n)
            return handler(ws)

        base.__init__(self, wired, server)

    return type("WiredWebSocket", (base,), {"__init__": init})


def install(server: Any, async_mode: str) -> bool:
    """Give the Engine.IO server of `server` (python-socketio's) the wired WebSocket class for
    its async mode; False where the mode has none (threading: the library's path stays)."""
    eio = server.eio
    base = eio._async.get("websocket")
    if base is None:
        return False
    if async_mode == "gevent":
        from ticker.web.websocket import websocket_class

        eio._async = {**eio._async, "websocket": websocket_class(gevent_websocket_class(base))}
    elif async_mode == "eventlet":
        eio._async = {**eio._async, "websocket": eventlet_websocket_class(base)}
    else:
        return False
    return True
