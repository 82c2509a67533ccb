"""The whole service behind Redis Sentinel, its master killed: every part follows the failover to
the promoted replica by itself, and every client streams again, subscriptions intact.

A master, a replica and three sentinels of the test's own (tests/support/sentinel.py: a master
silent for 1 s is down), the simulator, the shard worker, the jobs worker, beat, and one web
replica per async mode, all with `REDIS_URL=redis+sentinel://...`. Socket.IO clients subscribe;
the master is killed with SIGKILL. Each client must see a tick of every token it subscribed to,
parsed after the kill (so carried by the new master), within 15 s of the kill, without having
done anything (no reconnect, no new subscribe). The sequence never goes backwards and the
failover begins a new epoch (a promoted replica may lack the latest writes). The Socket.IO
message queue and the Celery broker follow the failover too. The time to recover is printed.
"""

from __future__ import annotations

import subprocess
import time

import pytest
import requests
from sqlalchemy import text

from tests.support.clients import RecordingClient
from tests.support.processes import (
    ROOT,
    VENV_BIN,
    Process,
    free_port,
    port_open,
    service_processes,
    simulator_env,
    stop_all,
    wait_for,
)
from tests.support.sentinel import SentinelDeployment
from ticker.bus import keys
from ticker.bus.message_queue import LiveRedisManager
from ticker.config import Config
from ticker.db import engine_for
from ticker.registry.tokens import OPERATORS_ROOM

pytestmark = pytest.mark.integration

MODES = ("gevent", "eventlet")
RECOVERY_TARGET_SECS = 15.0  # the service's promise: streaming again within this of the master's death


@pytest.fixture
def sentinel_stack(service_env, registry, database, tmp_path):
    """The whole service on a Sentinel deployment of its own, with a simulator of its own."""
    deployment = SentinelDeployment(tmp_path).start()
    sim_port = free_port()
    # The channel namespace of this process's emitter (the database number's: ticker.config).
    env = {**service_env, "REDIS_URL": deployment.url(0), "TICKER_CHANNEL_NAMESPACE": Config.CHANNEL_NAMESPACE,
           **simulator_env(sim_port)}
    webs = {mode: free_port() for mode in MODES}
    processes: list[Process] = []
    try:
        deployment.wait_ready()
        processes += service_processes("sentinel", env, tmp_path, sim_port, webs)
        urls = {mode: f"http://127.0.0.1:{port}" for mode, port in webs.items()}
        for mode, web_port in webs.items():
            wait_for(lambda: port_open(web_port), 30, f"the {mode} web replica")  # noqa: B023
            wait_for(lambda: requests.get(f"{urls[mode]}/health", timeout=10).status_code == 200, 40,  # noqa: B023
                     f"a healthy {mode} replica")
        yield {"webs": urls, "deployment": deployment, "env": env, "processes": processes}
    finally:  # a failed start too: nothing outlives the test
        stop_all(processes)  # while Redis is up: a warm shutdown gives back leases
        deployment.stop()


def tokens_of(database: str, count: int) -> list[int]:
    with engine_for(database).connect() as connection:
        return list(connection.execute(text(
            "SELECT instrument_token FROM instruments WHERE segment IN ('NSE', 'BSE') "
            "ORDER BY instrument_token LIMIT :count"), {"count": count}).scalars())


def positions(client: RecordingClient, token: int) -> list[tuple[int, int]]:
    return [(tick["epoch"], tick["seq"]) for tick in client.ticks_for(token)]


def streaming_since(client: RecordingClient, tokens: list[int], since_ms: int) -> bool:
    """Every token has a tick its shard parsed after `since_ms` (epoch ms)."""
    return all(any(tick["ingest_ts"] > since_ms for tick in client.ticks_for(token)) for token in tokens)


def workers_answer(env: dict[str, str]) -> bool:
    """`celery inspect ping` (the broker's remote control, through the sentinels) reaches both workers."""
    reply = subprocess.run([str(VENV_BIN / "celery"), "-A", "tasks", "inspect", "ping", "--timeout", "2"], env=env,
                           cwd=ROOT, capture_output=True, text=True, timeout=30)
    return reply.returncode == 0 and "sentinel-shards@" in reply.stdout and "sentinel-jobs@" in reply.stdout


def test_the_service_follows_a_sentinel_failover_without_help(sentinel_stack, database, make_token):
    deployment, env = sentinel_stack["deployment"], sentinel_stack["env"]
    tokens = tokens_of(database, 3)
    clients = {mode: RecordingClient().connect(url, make_token(f"sentinel-{mode}"))
               for mode, url in sentinel_stack["webs"].items()}
    operators = {}
    try:
        for mode, url in sentinel_stack["webs"].items():
            operator = operators[mode] = RecordingClient()
            operator.sio.on("kite_account", lambda data, o=operator: o.events["kite_account"].append(data))
            operator.connect(url, make_token(f"sentinel-ops-{mode}", admin=True))
        for client in clients.values():
            reply = client.call("subscribe", {"tokens": tokens})
            assert reply["tokens"] == tokens and reply["rejected"] == [], reply
            client.wait_for_ticks(tokens, count=2, timeout=20)

        killed_ms = int(time.time() * 1000)
        killed = time.monotonic()
        deployment.servers["master"].kill()  # SIGKILL: the master is gone; the replica has what reached it
        recovered = {}
        while len(recovered) < len(clients) and time.monotonic() - killed < RECOVERY_TARGET_SECS:
            for mode, client in clients.items():
                if mode not in recovered and streaming_since(client, tokens, killed_ms):
                    recovered[mode] = time.monotonic() - killed
            time.sleep(0.05)
        failover = deployment.master_address()
        print("\nSentinel failover (master SIGKILLed, down-after 1000 ms): streaming again after "
              + ", ".join(f"{mode} {secs:.1f}s" for mode, secs in recovered.items())
              + f" (every token of every client; target {RECOVERY_TARGET_SECS:g}s); master now {failover}")
        assert set(recovered) == set(clients), f"not streaming again within {RECOVERY_TARGET_SECS}s: {recovered}"
        assert failover == ("127.0.0.1", deployment.replica_port)

        for client in clients.values():
            assert client.sio.connected  # the client never had to do anything
            for token in tokens:
                ordered = positions(client, token)
                assert ordered == sorted(set(ordered)), ordered  # never backwards, never twice
                assert len({epoch for epoch, _ in ordered}) == 2, ordered  # the failover began a new epoch
            assert all(error["code"] == "upstream_unavailable" for error in client.events["error"]), \
                client.events["error"]

        # The control plane too: an emit through the sentinels (as a worker's) reaches operators.
        emitter = LiveRedisManager.emitter(deployment.url(0), keys.SOCKETIO_CHANNEL)
        for mode, operator in operators.items():
            wait_for(lambda: emitter.emit("kite_account", {"api_key": "k"}, to=OPERATORS_ROOM, namespace="/") or
                     operator.events["kite_account"], 30, f"a control message again ({mode})", interval=1)  # noqa: B023
        # And the Celery broker: both workers answer a remote-control ping through it.
        wait_for(lambda: workers_answer(env), 30, "both Celery workers to answer through the new master", interval=1)
        for url in sentinel_stack["webs"].values():
            wait_for(lambda: requests.get(f"{url}/health", timeout=5).status_code == 200, 30,  # noqa: B023
                     "the service to report healthy again")
    finally:
        for client in [*clients.values(), *operators.values()]:
            client.close()
