"""The WebSocket under Engine.IO in a gevent replica: one greenlet per client.

python-engineio's gevent driver runs simple-websocket, which reads every connection in a
greenlet of its own and hands messages over through an event, while Engine.IO's handler waits
on that event and a writer greenlet waits on the connection's packet queue: three greenlets
per client, idle for most of its life (about 70 KiB of replica memory per idle client, with
the rest). Here the request's greenlet runs Engine.IO's WebSocket handler itself (`serve`)
and reads the socket in place; packets are written when they are sent (`DirectQueue`, through
the connection's `Wire`, which never makes a sender wait). The handshake is answered without
an HTTP parser per connection; frames are read with wsproto (no extensions: a connection that
asks for compression keeps simple-websocket).
"""

from __future__ import annotations

import collections
import logging
import queue
from collections.abc import Callable
from typing import Any

import gevent
import gevent.lock
from engineio import exceptions as engineio_exceptions
from engineio import packet
from wsproto import ConnectionType
from wsproto.connection import Connection, ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, RemoteProtocolError, generate_accept_token

from ticker.web.wire import BINARY, TEXT, Wire, compressed, frame, raw_socket

log = logging.getLogger(__name__)

RECEIVE_BYTES = 4096


class DirectQueue:
    """Stands in for an Engine.IO socket's packet queue once its WebSocket is open: `put`
    writes the packet at once (or right after the write in flight), so no greenlet per
    connection waits on a queue to do it. `None` (Engine.IO closing the socket) closes the
    WebSocket; `join` returns once everything put has been written."""

    def __init__(self, websocket: GeventWebSocket):
        self.websocket = websocket

    def put(self, pkt: packet.Packet | None) -> None:
        if pkt is None:
            self.websocket.close()
            return
        try:
            self.websocket.send(pkt.encode())
        except OSError:
            pass  # the connection is gone; the reading side ends it

    def qsize(self) -> int:
        return len(self.websocket.wire.backlog) if self.websocket.wire is not None else 0

    def empty(self) -> bool:
        return not self.qsize()

    def join(self) -> None:
        with self.websocket.lock:  # held while a write is in flight
            pass

    def get(self, block: bool = True, timeout: float | None = None) -> packet.Packet:
        """Only a long-polling request would ask, and Engine.IO answers those itself once a
        socket is upgraded."""
        raise queue.Empty

    def task_done(self) -> None:
        pass


def websocket_class(fallback: type) -> type:
    """The Engine.IO WebSocket class for gevent; `fallback` (simple-websocket's, wired) serves
    the connections this one does not (compression offered, a socket it cannot find)."""
    return type("GeventWebSocket", (GeventWebSocket,), {"FALLBACK": fallback})


class GeventWebSocket:
    FALLBACK: type

    def __init__(self, handler: Callable[[Any], Any], server: Any):
        self.app = handler  # Engine.IO's `_websocket_handler`, bound to its socket
        self.server = server
        self._sock: Any = None  # Engine.IO sets its read timeout (ping interval + timeout) on this
        self.lock = gevent.lock.Semaphore()
        self.protocol = Connection(ConnectionType.SERVER)
        self.messages: collections.deque[str | bytes] = collections.deque()
        self.partial: list[str | bytes] = []
        self.partial_size = 0
        self.closed = False
        self.wire: Wire | None = None

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        sock = raw_socket(environ)
        key = environ.get("HTTP_SEC_WEBSOCKET_KEY", "")
        if sock is None or compressed(environ):
            return self.FALLBACK(self.app, self.server)(environ, start_response)
        if not key or environ.get("HTTP_SEC_WEBSOCKET_VERSION") != "13":
            start_response("400 Bad Request", [("Content-Type", "text/plain")])
            return [b"a WebSocket upgrade needs Sec-WebSocket-Key and Sec-WebSocket-Version 13"]
        sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + generate_accept_token(key.encode()) + b"\r\n\r\n")
        self._sock = sock
        engine_socket = getattr(self.app, "__self__", None)
        if engine_socket is None:
            self.app(self)  # Engine.IO's own handler, with its writer greenlet
            return []
        self.wire = Wire(sock, sock._sock, self.lock, gevent.spawn)
        self.serve(engine_socket)
        return []

    def serve(self, engine_socket: Any) -> None:
        """Engine.IO's WebSocket handler (`Socket._websocket_handler`, python-engineio 4),
        without its writer greenlet: the socket's queue is replaced by one that writes each
        packet as it is put (`DirectQueue`). Reads run in this greenlet."""
        server = engine_socket.server
        sock_timeout = server.ping_interval + server.ping_timeout
        self._sock.settimeout(sock_timeout)
        if engine_socket.connected:  # upgrading from long-polling: the probe, then UPGRADE
            engine_socket.upgrading = True
            probe = self.wait()
            if probe != "2probe":
                engine_socket.upgrading = False
                return
            self.send("3probe")
            engine_socket.queue.put(packet.Packet(packet.NOOP))  # ends the pending poll
            if self.wait() != "5":
                engine_socket.upgrading = False
                return
            engine_socket.upgraded, engine_socket.upgrading = True, False
        else:
            engine_socket.connected = engine_socket.upgraded = True
        polling_queue, engine_socket.queue = engine_socket.queue, DirectQueue(self)
        while not polling_queue.empty():  # what was sent while upgrading, in order
            engine_socket.queue.put(polling_queue.get_nowait())
        # Only now may the fan-out write ticks straight to the socket: during the probe a tick
        # would reach the client before `3probe` and fail its upgrade.
        engine_socket.wire = self.wire
        try:
            self._read_packets(engine_socket)
        finally:
            engine_socket.close(wait=False, abort=True, reason=server.reason.TRANSPORT_CLOSE)
            self.close()

    def _read_packets(self, engine_socket: Any) -> None:
        while True:
            try:
                message = self.wait()
            except OSError:  # silent past the ping timeout, or reset
                return
            if message is None or len(message) > engine_socket.server.max_http_buffer_size:
                return
            try:
                engine_socket.receive(packet.Packet(encoded_packet=message))
            except engineio_exceptions.UnknownPacketError:
                pass
            except engineio_exceptions.SocketIsClosedError:
                return
            except Exception:  # noqa: BLE001  (as Engine.IO: log, and end this connection only)
                log.exception("error handling a packet from %s", engine_socket.sid)
                return

    # What Engine.IO calls -------------------------------------------------------------------

    def wait(self) -> str | bytes | None:
        """The next message from the client, or None once the connection has ended."""
        while not self.messages:
            if self.closed:
                return None
            try:
                data = self._sock.recv(RECEIVE_BYTES)
            except OSError:
                data = b""
            if not data:
                self.closed = True
                return None
            try:
                self._receive(data)
            except (LocalProtocolError, RemoteProtocolError):
                self._send_close(CloseReason.PROTOCOL_ERROR, "protocol error")
                self.closed = True
        return self.messages.popleft()

    def send(self, message: str | bytes) -> None:
        if self.closed or self.protocol.state is not ConnectionState.OPEN:
            raise OSError("the WebSocket is closed")
        if isinstance(message, bytes):
            data = frame(message, BINARY)
        else:
            data = frame(message.encode(), TEXT)
        self._write(data)

    def close(self) -> None:
        if not self.closed:
            self._send_close(CloseReason.NORMAL_CLOSURE, None)
        self.closed = True

    # ----------------------------------------------------------------------------------------

    def _receive(self, data: bytes) -> None:
        self.protocol.receive_data(data)
        for event in self.protocol.events():
            if isinstance(event, (TextMessage, BytesMessage)):
                self._collect(event)
            elif isinstance(event, Ping):
                self._write(self.protocol.send(event.response()))
            elif isinstance(event, CloseConnection):
                if self.protocol.state is ConnectionState.REMOTE_CLOSING:
                    self._write(self.protocol.send(event.response()))
                self.closed = True

    def _collect(self, event: TextMessage | BytesMessage) -> None:
        self.partial.append(event.data)
        self.partial_size += len(event.data)
        if self.partial_size > self.server.max_http_buffer_size:
            self.partial.clear()
            self._send_close(CloseReason.MESSAGE_TOO_BIG, "message is too big")
            self.closed = True
            return
        if event.message_finished:
            parts, self.partial, self.partial_size = self.partial, [], 0
            self.messages.append(parts[0] if len(parts) == 1 else parts[0][:0].join(parts))

    def _send_close(self, code: int, reason: str | None) -> None:
        if self.protocol.state is ConnectionState.OPEN:
            try:
                self._write(self.protocol.send(CloseConnection(code=code, reason=reason)))
            except OSError:
                pass

    def _write(self, data: bytes) -> None:
        if self.wire is not None:
            self.wire.enqueue(data)  # never waits, so any greenlet may send to any client
            return
        with self.lock:  # the fan-out's frames hold it too
            self._sock.sendall(data)
