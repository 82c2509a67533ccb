"""The Socket.IO CONNECT packet (`40{...}`) reaches the client before the `connected` event
(`42["connected",...]`), over both transports and in both async modes (docs/API.md, "Connect").

Checked at the protocol level, with the Engine.IO/Socket.IO handshake done by hand: a client
library may hide the order (socket.io-client buffers events that come early; others drop them).
"""

from __future__ import annotations

import json

import pytest
import requests
import websocket

from tests.web.webproc import start_web

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["gevent", "eventlet"])
def web_url(request, stack, processes, service_env, workdir) -> str:
    if request.param == "gevent":  # the stack's replica runs the default, gevent
        return stack["url"]
    return start_web(processes, service_env, workdir, "web-connect-order-eventlet", ASYNC_MODE="eventlet").url


def socket_io_packets(frames: list[str]) -> list[str]:
    """The Socket.IO packets among Engine.IO packets, each shortened to its type and event."""
    packets = []
    for message in frames:
        if message.startswith("40"):
            packets.append("CONNECT")
        elif message.startswith("44"):
            packets.append("CONNECT_ERROR")
        elif message.startswith("42"):
            packets.append(json.loads(message[2:])[0])
    return packets


def test_connect_comes_before_connected_over_websocket(web_url, make_token):
    ws = websocket.create_connection(web_url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket",
                                     timeout=5)
    try:
        assert ws.recv().startswith("0")  # Engine.IO open
        ws.send("40" + json.dumps({"token": make_token("order-ws")}))
        frames = [ws.recv(), ws.recv()]
    finally:
        ws.close()
    assert socket_io_packets(frames) == ["CONNECT", "connected"], frames


def test_connect_comes_before_connected_over_polling(web_url, make_token):
    url = f"{web_url}/socket.io/"
    with requests.Session() as http:
        opened = http.get(url, params={"EIO": 4, "transport": "polling"}, timeout=5).text
        sid = json.loads(opened[1:])["sid"]
        query = {"EIO": 4, "transport": "polling", "sid": sid}
        http.post(url, params=query, data="40" + json.dumps({"token": make_token("order-polling")}),
                  timeout=5).raise_for_status()
        frames = []
        while len(socket_io_packets(frames)) < 2:
            frames += http.get(url, params=query, timeout=5).text.split("\x1e")
        http.post(url, params=query, data="1", timeout=5)  # Engine.IO close
    assert socket_io_packets(frames)[:2] == ["CONNECT", "connected"], frames


def test_a_refusal_is_a_connect_error_and_nothing_else(web_url):
    ws = websocket.create_connection(web_url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket",
                                     timeout=5)
    try:
        ws.recv()
        ws.send("40" + json.dumps({"token": "not.a.jwt"}))
        refusal = ws.recv()
    finally:
        ws.close()
    assert refusal.startswith("44"), refusal
    assert json.loads(refusal[2:])["data"]["code"] == "token_invalid"
