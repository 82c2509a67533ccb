"""The service with its tick bus on a real Redis Cluster (3 masters, 3 replicas): ticks of tokens
whose buckets live on different masters reach Socket.IO clients, and when a master is killed
(SIGKILL) and its replica promoted, the clients get ticks again without doing anything and
without losing a subscription.

Leases, demand, Celery and the Socket.IO queue stay on a Redis server of the test's own; a
simulator of its own feeds it (the session's stack holds connections of the same API key)."""

from __future__ import annotations

import pytest
import requests
from kiteconnect import KiteConnect
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
from ticker.bus import keys
from ticker.bus.connection import tick_bus_client
from ticker.db import engine_for

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster_stack(service_env, registry, database, redis_cluster, tmp_path):
    port, sim_port, web_port = free_port(), free_port(), free_port()
    server = start_redis(port, tmp_path, "redis-main")
    env = {**service_env, "REDIS_URL": f"redis://127.0.0.1:{port}/0", "TICKER_CHANNEL_NAMESPACE": "cluster",
           "TICK_BUS_URL": redis_cluster.url, **simulator_env(sim_port)}
    processes = service_processes("cluster", env, tmp_path, sim_port, {"": web_port})
    url = f"http://127.0.0.1:{web_port}"
    try:
        wait_for(lambda: port_open(web_port), 30, "the web replica")
        wait_for(lambda: requests.get(f"{url}/health", timeout=10).status_code == 200, 40, "a healthy replica")
        yield {"url": url, "web": processes[-1]}
    finally:
        stop_all(processes)
        stop_all([server])


def one_token_per_master(database, cluster) -> dict[str, int]:
    """master name -> a tradable token whose bucket that master owns."""
    with engine_for(database).connect() as connection:
        tokens = connection.execute(text(
            "SELECT instrument_token FROM instruments WHERE segment = 'NSE' ORDER BY instrument_token")).scalars()
        chosen: dict[str, int] = {}
        for token in tokens:
            chosen.setdefault(cluster.get_node_from_key(keys.bucket_tag(keys.bucket_of(token))).name, token)
    return chosen


def test_clients_keep_their_ticks_through_the_failover_of_a_master(cluster_stack, redis_cluster, database, make_token):
    cluster = tick_bus_client(redis_cluster.url)
    by_master = one_token_per_master(database, cluster)
    assert len(by_master) == 3, by_master
    tokens = sorted(by_master.values())
    clients = [RecordingClient().connect(cluster_stack["url"], make_token(f"cluster-{n}")) for n in range(2)]
    for client in clients:
        client.sio.on("upstream_restored", lambda data, c=client: c.events["upstream_restored"].append(data))
    try:
        for client in clients:
            reply = client.call("subscribe", {"tokens": tokens, "mode": "ltp"})
            assert reply["tokens"] == tokens and reply["rejected"] == [], reply
        for client in clients:
            client.wait_for_ticks(tokens, count=3, timeout=20)  # every master delivers

        victim = next(iter(by_master))
        redis_cluster.kill(int(victim.rsplit(":", 1)[1]))  # SIGKILL: its replica takes over
        wait_for(redis_cluster.healthy, 20, "a replica promoted and the cluster ok again")
        seen = {id(client): {t: len(client.ticks_for(t)) for t in tokens} for client in clients}

        for client in clients:
            wait_for(lambda: all(len(client.ticks_for(t)) >= seen[id(client)][t] + 3 for t in tokens),  # noqa: B023
                     30, "ticks of every token again after the failover")
            assert client.sio.connected  # the client never had to do anything
            assert client.events["unsubscribed"] == [], client.events["unsubscribed"]
            # A notice, if the failover outlasted DOWN_NOTICE_SECS, names the lost master's tokens
            # only, says why, and is followed by `upstream_restored`.
            told = [e for e in client.events["error"] if e.get("code") == "upstream_unavailable"]
            assert all(e["reason"] == "bus_unavailable" and e["tokens"] == [by_master[victim]] for e in told), told
            if told:
                wait_for(lambda: client.events["upstream_restored"], 10, "upstream_restored")  # noqa: B023
            for token in tokens:  # within an epoch, never backwards and never twice
                ordered = [(tick["epoch"], tick["seq"]) for tick in client.ticks_for(token)]
                assert ordered == sorted(set(ordered)), (token, ordered)
        health = requests.get(f"{cluster_stack['url']}/health", timeout=5)
        assert health.status_code == 200, health.text
        assert "lost" in cluster_stack["web"].output()  # the listener noticed, and resubscribed

        # Quotes are read from the cluster's snapshots; live candles are refused, saying why.
        kite = KiteConnect("any_api_key", root=cluster_stack["url"])
        kite.set_access_token(make_token("cluster-quotes"))
        quoted = kite.ltp([str(token) for token in tokens])
        assert sorted(q["instrument_token"] for q in quoted.values()) == tokens, quoted
        assert all(q["last_price"] > 0 for q in quoted.values()), quoted
        refused = clients[0].call("subscribe", {"tokens": tokens[:1], "candles": ["minute"]})
        assert refused["error"]["code"] == "bad_request" and "Cluster" in refused["error"]["message"], refused
    finally:
        for client in clients:
            client.close()
