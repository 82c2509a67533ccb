"""Engine.IO heartbeats: one pinger for every connection of a replica, in both async modes."""

from __future__ import annotations

import json
import time

import pytest
import websocket

from tests.web.webproc import start_web

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["eventlet", "gevent"])
def web(request, stack, processes, service_env, workdir):
    mode = request.param
    return start_web(processes, service_env, workdir, f"web-heartbeat-{mode}", ASYNC_MODE=mode,
                     PING_INTERVAL_SECS="1", PING_TIMEOUT_SECS="1")


def engineio_socket(web, token: str) -> websocket.WebSocket:
    ws = websocket.create_connection(
        web.url.replace("http", "ws", 1) + f"/socket.io/?EIO=4&transport=websocket&token={token}", timeout=5)
    opened = ws.recv()
    assert opened.startswith("0") and json.loads(opened[1:])["pingInterval"] == 1000
    ws.send("40")
    return ws


def test_every_connection_is_pinged_each_interval_and_stays_while_it_answers(web, make_token):
    sockets = [engineio_socket(web, make_token(f"beat{i}")) for i in range(3)]
    pings = [0] * len(sockets)
    deadline = time.monotonic() + 6.5
    try:
        while time.monotonic() < deadline:
            for i, ws in enumerate(sockets):
                ws.settimeout(0.05)
                try:
                    message = ws.recv()
                except websocket.WebSocketTimeoutException:
                    continue
                if message == "2":
                    pings[i] += 1
                    ws.send("3")
        assert all(4 <= n <= 7 for n in pings), pings  # about one a second each
        for ws in sockets:
            ws.settimeout(2)
            ws.send('42["ping"]')  # still connected: the server answers an event
            while not (reply := ws.recv()).startswith("42"):
                pass
            assert "pong" in reply
    finally:
        for ws in sockets:
            ws.close()


def test_a_connection_that_stops_answering_pings_is_closed(web, make_token):
    ws = engineio_socket(web, make_token("silent"))
    ws.settimeout(1)
    started = time.monotonic()
    try:
        while True:  # read, never answer
            try:
                if ws.recv_frame().opcode == websocket.ABNF.OPCODE_CLOSE:
                    break
            except websocket.WebSocketTimeoutException:
                pass
            except websocket.WebSocketConnectionClosedException:
                break
            assert time.monotonic() - started < 8, "the silent connection is still open"
    finally:
        ws.shutdown()
    assert time.monotonic() - started >= 1.5  # not before a ping went unanswered
