"""Both async modes serve the whole protocol with real clients: eventlet (the design card's)
and gevent (the default, since it measured faster: README, BENCHMARKS.md)."""

from __future__ import annotations

import pytest
import websocket

from tests.support.clients import RecordingClient
from tests.support.processes import wait_for
from tests.web.test_fanout import StalledClient, consecutive
from tests.web.webproc import start_web, tokens_of

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["eventlet", "gevent"])
def web(request, stack, processes, service_env, workdir):
    mode = request.param
    return start_web(processes, service_env, workdir, f"web-{mode}", ASYNC_MODE=mode, SLOW_CLIENT_SECS="2")


def test_subscribe_snapshot_ticks_ping_and_unsubscribe(web, make_token, database):
    tokens = tokens_of(database, "NSE", 3, skip=60)
    client = RecordingClient().connect(web.url, make_token("modes"))
    try:
        assert wait_for(lambda: client.events["connected"], 5, "connected")[0]["user"] == "modes"
        reply = client.call("subscribe", {"tokens": tokens, "mode": "quote"})
        assert reply["tokens"] == tokens and reply["rejected"] == []
        client.wait_for_ticks(tokens, count=3)
        for token in tokens:
            ticks = client.ticks_for(token)
            assert all(t["mode"] == "quote" for t in ticks) and consecutive([t["seq"] for t in ticks])
        assert client.call("ping")["server_time"]
        assert client.call("unsubscribe", {"tokens": tokens}) == {"tokens": tokens, "total": 0}
    finally:
        client.close()


def test_a_stalled_client_is_cut_off(web, make_token, database):
    stalled = StalledClient(web.url, make_token("stalled"))
    stalled.subscribe(tokens_of(database, "NFO-OPT", 400, skip=2000), "full")
    wait_for(lambda: "slow_consumer" in web.process.output(), 30, "the stalled client to be cut off")
    wait_for(stalled.closed_by_server, 10, "the stalled connection to be closed")


def test_the_server_ends_the_connection_after_the_closing_handshake(web, make_token):
    """RFC 6455 (7.1.1): the server closes the TCP connection; clients wait for it (python-socketio's
    `disconnect()` for up to 3 s, browsers about 2 s before reporting `close`)."""
    query = f"/socket.io/?EIO=4&transport=websocket&token={make_token('closing')}"
    ws = websocket.create_connection(web.url.replace("http", "ws", 1) + query, timeout=5)
    assert ws.recv().startswith("0")  # Engine.IO open
    ws.send("40")
    while not ws.recv().startswith("40"):  # Socket.IO connect (`connected` may come first)
        pass

    ws.send_close()
    while ws.recv_frame().opcode != websocket.ABNF.OPCODE_CLOSE:
        pass
    ws.sock.settimeout(1)
    try:
        end = ws.sock.recv(1)
    except TimeoutError:
        end = "the connection still open after 1 s"
    ws.shutdown()
    assert end == b""
