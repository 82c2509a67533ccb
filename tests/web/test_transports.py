"""Clients that start with long-polling (a browser's default) and upgrade to WebSocket get the
same stream, in both async modes: the upgrade hands the connection from Engine.IO's polling
queue to the WebSocket without losing or reordering a packet."""

from __future__ import annotations

import pytest

from tests.support.clients import RecordingClient
from tests.support.processes import wait_for
from tests.web.test_fanout import consecutive
from tests.web.webproc import start_web, tokens_of

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["eventlet", "gevent"])
def web(request, stack, processes, service_env, workdir):
    mode = request.param
    return start_web(processes, service_env, workdir, f"web-transports-{mode}", ASYNC_MODE=mode)


def test_a_polling_client_upgrades_and_streams(web, make_token, database):
    tokens = tokens_of(database, "NSE", 3, skip=90)
    client = RecordingClient().connect(web.url, make_token("upgrader"), transports=["polling", "websocket"])
    try:
        assert wait_for(lambda: client.events["connected"], 5, "connected")[0]["user"] == "upgrader"
        reply = client.call("subscribe", {"tokens": tokens, "mode": "ltp"})
        assert reply["tokens"] == tokens and reply["rejected"] == []
        wait_for(lambda: client.sio.transport() == "websocket", 10, "the upgrade to WebSocket")
        client.wait_for_ticks(tokens, count=4)
        for token in tokens:
            ticks = client.ticks_for(token)
            assert all(t["mode"] == "ltp" for t in ticks) and consecutive([t["seq"] for t in ticks])
        assert client.call("ping")["server_time"]
    finally:
        client.close()
