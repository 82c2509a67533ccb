"""Both async modes serve the whole protocol with real clients: eventlet (the design card's)
and gevent (the default, since it measured faster: README, BENCHMARKS.md)."""

from __future__ import annotations

import pytest

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
