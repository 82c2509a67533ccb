"""Engine.IO heartbeats from one greenlet for every connection.

Engine.IO pings each client every `ping_interval` seconds and expects a pong; python-engineio
schedules each ping by starting a greenlet that sleeps for the interval, so every idle client
holds one more greenlet (its stack and its timer, about 5 KiB) for its whole life. Since the
interval is the same for everyone, the connections due next are simply the oldest scheduled:
one queue in time order and one greenlet that sends the pings when they are due.
"""

from __future__ import annotations

import collections
import time
from typing import Any

from engineio import packet
from engineio import socket as engineio_socket

TICK_SECS = 0.5  # how late a ping may go out (the client allows ping_interval + ping_timeout)


class Pinger:
    def __init__(self, server: Any):
        self.server = server  # the Engine.IO server
        self.due: collections.deque[tuple[float, Any]] = collections.deque()
        self.running = False

    def schedule(self, connection: Any) -> None:
        """What `Socket.schedule_ping` does: once the previous ping was answered, ping again
        after the interval."""
        if not connection.last_ping:
            return
        connection.last_ping = None
        self.due.append((time.monotonic() + self.server.ping_interval, connection))
        if not self.running:
            self.running = True
            self.server.start_background_task(self.run)

    def run(self) -> None:
        while True:
            self.send_due(time.monotonic())
            self.server.sleep(TICK_SECS)

    def send_due(self, now: float) -> None:
        due = self.due
        while due and due[0][0] <= now:
            _, connection = due.popleft()
            if not connection.closing and not connection.closed:
                connection.last_ping = time.time()
                connection.send(packet.Packet(packet.PING))


def schedule_ping(connection: Any) -> None:
    """Replaces `engineio.socket.Socket.schedule_ping`: one pinger per Engine.IO server."""
    server = connection.server
    pinger = server.__dict__.get("pinger")
    if pinger is None:
        pinger = server.pinger = Pinger(server)
    pinger.schedule(connection)


def install() -> None:
    """Ping connections from one greenlet per server. Engine.IO creates its sockets inside the
    library, so this replaces the method on their class (a web replica runs one server)."""
    engineio_socket.Socket.schedule_ping = schedule_ping
