"""A replica's Redis connections die without a FIN: a NAT or firewall forgot them, so bytes
are swallowed and no RST comes (new connections work). The replica notices within a bounded
time (application-level pings, not TCP), reconnects, resubscribes, and its clients get ticks
and control messages again; while it cannot, /health says so.

The replica reaches the test run's Redis through a TCP proxy the test controls; everything
else (simulator, shard worker, beat) talks to Redis directly."""

from __future__ import annotations

import re

import pytest
import requests
from flask_socketio import SocketIO

from tests.support.clients import RecordingClient
from tests.support.processes import wait_for
from tests.support.proxy import TcpProxy
from tests.web.webproc import start_web, tokens_of
from ticker.bus import keys
from ticker.registry.tokens import OPERATORS_ROOM

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["gevent", "eventlet"])
def proxied(request, stack, processes, service_env, workdir, redis):
    """A replica whose every Redis connection goes through a proxy."""
    port = redis.connection_pool.connection_kwargs["port"]
    db = redis.connection_pool.connection_kwargs.get("db", 0)
    proxy = TcpProxy(("127.0.0.1", port)).start()
    web = start_web(processes, service_env, workdir, f"web-proxied-{request.param}", ASYNC_MODE=request.param,
                    REDIS_URL=f"redis://127.0.0.1:{proxy.port}/{db}",
                    TICKER_CHANNEL_NAMESPACE=keys.CHANNELS.split(":", 1)[1])
    yield web, proxy
    proxy.stop()


def counter(url: str, name: str, **labels: str) -> float:
    text = requests.get(f"{url}/metrics?scope=replica", timeout=10).text
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    match = re.search(rf"^{name}{{{wanted}}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def health(url: str) -> requests.Response:
    return requests.get(f"{url}/health", timeout=30)


def test_ticks_and_control_messages_resume_after_the_connections_went_silent(proxied, make_token, database, app):
    web, proxy = proxied
    token = tokens_of(database, "NSE", 1, skip=900)[0]
    client = RecordingClient().connect(web.url, make_token("silent-nat"))
    admin = RecordingClient()
    admin.sio.on("kite_account", lambda data: admin.events["kite_account"].append(data))
    admin.connect(web.url, make_token("silent-ops", admin=True))
    try:
        client.call("subscribe", {"tokens": [token], "mode": "ltp"})
        client.wait_for_ticks([token], count=2)

        assert proxy.blackhole() > 0  # every connection the replica holds goes silent, for good
        seen = len(client.ticks_for(token))
        wait_for(lambda: len(client.ticks_for(token)) >= seen + 3, 25, "ticks again after the black hole")
        assert counter(web.url, "ticker_bus_listener_reconnects_total", reason="silent") >= 1

        emitter = SocketIO(message_queue=app.config["REDIS_URL"], channel=keys.SOCKETIO_CHANNEL)
        wait_for(lambda: emitter.emit("kite_account", {"api_key": "k"}, to=OPERATORS_ROOM, namespace="/") or
                 admin.events["kite_account"], 25, "a control message through the message queue again", interval=1)
        assert counter(web.url, "ticker_message_queue_reconnects_total", reason="silent") >= 1
        assert client.sio.connected and admin.sio.connected  # the clients never had to do anything
    finally:
        client.close()
        admin.close()


def test_a_replica_whose_tick_path_is_dead_says_so_and_recovers_by_itself(proxied, make_token, database):
    web, proxy = proxied
    token = tokens_of(database, "NSE", 1, skip=901)[0]
    client = RecordingClient().connect(web.url, make_token("dead-path"))
    try:
        client.call("subscribe", {"tokens": [token], "mode": "ltp"})
        client.wait_for_ticks([token], count=2)

        proxy.blackhole(new=True)  # and Redis stays unreachable: nothing can reconnect
        report = wait_for(lambda: (r := health(web.url)).status_code == 503 and r.json(), 30, "/health to say 503")
        assert not report["checks"]["redis"]["ok"]
        wait_for(lambda: (r := health(web.url)).status_code == 503
                 and "tick listener" in r.json()["checks"]["delivery"].get("reason", ""), 30,
                 "/health to name the tick path")

        proxy.heal()
        seen = len(client.ticks_for(token))
        wait_for(lambda: len(client.ticks_for(token)) >= seen + 3, 30, "ticks again once Redis is reachable")
        wait_for(lambda: health(web.url).status_code == 200, 30, "/health to say 200 again")
    finally:
        client.close()
