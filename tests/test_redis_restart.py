"""Redis restarted under a running service: every part reconnects and resumes by itself, and
what Redis forgot is rebuilt or announced, never silently wrong.

The service runs against a Redis server of its own (so the machine's Redis, shared with other
tests, is never touched): simulator, Celery worker and beat, and two web replicas, one per
async mode, each with a subscribed Socket.IO client. Redis is killed with SIGKILL and started
again, empty, on the same port. The clients stay connected throughout: each must see ticks
again, and never a `seq` going backwards within an epoch (the sequence restarts under a new
`epoch`, which tells them so). New clients then subscribe by token and by name while the
replicas rebuild the registry's mirror from PostgreSQL.
"""

from __future__ import annotations

import pytest
import redis as redis_lib
import requests
from sqlalchemy import text

from tests.support.clients import RecordingClient
from tests.support.processes import (
    free_port,
    port_open,
    service_processes,
    simulator_env,
    start_redis,
    stop_all,
    wait_for,
)
from ticker.db import engine_for

pytestmark = pytest.mark.integration

MODES = ("gevent", "eventlet")


@pytest.fixture
def private_stack(service_env, registry, database, tmp_path, make_token):
    """The whole service on a Redis server of its own, and a simulator of its own (the session's
    stack already holds connections of the same API key on the session's simulator)."""
    port, sim_port = free_port(), free_port()
    url = f"redis://127.0.0.1:{port}/0"
    servers = [start_redis(port, tmp_path, "redis-1")]
    env = {**service_env, "REDIS_URL": url, "TICKER_CHANNEL_NAMESPACE": "restart", **simulator_env(sim_port)}
    webs = {mode: free_port() for mode in MODES}
    processes = service_processes("restart", env, tmp_path, sim_port, webs)
    urls = {mode: f"http://127.0.0.1:{port}" for mode, port in webs.items()}
    try:
        for mode, web_port in webs.items():
            wait_for(lambda: port_open(web_port), 30, f"the {mode} web replica")  # noqa: B023
            wait_for(lambda: requests.get(f"{urls[mode]}/health", timeout=10).status_code == 200, 40,  # noqa: B023
                     f"a healthy {mode} replica")
        yield {"webs": urls, "port": port, "servers": servers, "tmp": tmp_path, "make_token": make_token}
    finally:  # a failed start too: nothing outlives the test
        stop_all(processes)  # while Redis is up: a warm shutdown gives back leases
        stop_all(servers)


def positions(client: RecordingClient, token: int) -> list[tuple[int, int]]:
    return [(tick["epoch"], tick["seq"]) for tick in client.ticks_for(token)]


def test_the_service_recovers_from_a_redis_restart_without_help(private_stack, database):
    with engine_for(database).connect() as connection:
        token, symbol = connection.execute(text(
            "SELECT instrument_token, exchange || ':' || tradingsymbol FROM instruments WHERE segment = 'BSE' "
            "ORDER BY instrument_token LIMIT 1")).one()
    make_token = private_stack["make_token"]
    clients = {mode: RecordingClient().connect(url, make_token(f"restart-{mode}"))
               for mode, url in private_stack["webs"].items()}
    late: list[RecordingClient] = []
    try:
        for client in clients.values():
            client.call("subscribe", {"tokens": [token]})
            client.wait_for_ticks([token], count=2, timeout=15)

        private_stack["servers"][0].kill()  # SIGKILL: Redis loses everything it held
        private_stack["servers"][0].proc.wait(10)  # and its port is free for the next one
        private_stack["servers"].append(start_redis(private_stack["port"], private_stack["tmp"], "redis-2"))
        seen = {mode: len(client.ticks_for(token)) for mode, client in clients.items()}

        for mode, client in clients.items():
            wait_for(lambda: len(client.ticks_for(token)) >= seen[mode] + 3, 45,  # noqa: B023
                     f"ticks again after the restart ({mode})")
            assert client.sio.connected  # the client never had to do anything
            ordered = positions(client, token)
            assert ordered == sorted(set(ordered)), ordered  # never backwards, never twice
            assert len({epoch for epoch, _ in ordered}) == 2, ordered  # the restart began a new epoch
            assert client.events["error"] == [] or all(e["code"] == "upstream_unavailable"
                                                       for e in client.events["error"]), client.events["error"]
        for mode, url in private_stack["webs"].items():
            fresh = RecordingClient().connect(url, make_token(f"late-{mode}"))
            late.append(fresh)
            reply = fresh.call("subscribe", {"instruments": [symbol], "tokens": [token], "mode": "ltp"})
            assert reply["tokens"] == [token] and reply["rejected"] == [], reply
            fresh.wait_for_ticks([token], count=2, timeout=15)
        assert redis_lib.Redis(port=private_stack["port"]).ping()
        for url in private_stack["webs"].values():
            wait_for(lambda: requests.get(f"{url}/health", timeout=5).status_code == 200, 30,  # noqa: B023
                     "the service to report healthy again")
    finally:
        for client in [*clients.values(), *late]:
            client.close()
