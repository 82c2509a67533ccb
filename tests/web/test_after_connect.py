"""ticker.web.after_connect against the pinned python-socketio: deferred work runs after the
CONNECT packet of an accepted connection, never for a refused one, and an incompatible library
fails at startup."""

from __future__ import annotations

import pytest
import socketio
from socketio import packet

from ticker.web import after_connect


def server_seeing(refuse: bool) -> tuple[socketio.Server, list]:
    server = socketio.Server(async_mode="threading")
    seen: list = []
    server._send_packet = lambda eio_sid, pkt: seen.append(("packet", pkt.packet_type))

    @server.on("connect")
    def connect(sid, environ, auth):
        after_connect.defer("e1", lambda: seen.append(("deferred", sid)))
        if refuse:
            raise socketio.exceptions.ConnectionRefusedError("no", {"code": "token_invalid"})

    after_connect.install(server)
    server.environ["e1"] = {}
    return server, seen


def test_deferred_work_follows_the_connect_packet():
    server, seen = server_seeing(refuse=False)
    server._handle_connect("e1", "/", {"token": "t"})
    sid = server.manager.sid_from_eio_sid("e1", "/")
    assert seen == [("packet", packet.CONNECT), ("deferred", sid)]


def test_a_refused_connection_runs_nothing_deferred():
    server, seen = server_seeing(refuse=True)
    server._handle_connect("e1", "/", {"token": "t"})
    assert seen == [("packet", packet.CONNECT_ERROR)]
    assert after_connect._pending == {}


def test_an_incompatible_library_fails_at_startup():
    class Reshaped:
        def _handle_connect(self, eio_sid, namespace, data, extra):
            pass

    with pytest.raises(RuntimeError, match="_handle_connect changed"):
        after_connect.install(Reshaped())
