"""Three web replicas on one Redis: every client gets every tick of its tokens exactly once;
a replica killed mid-stream loses only its own clients, who reconnect elsewhere and get
snapshots, and its demand expires."""

from __future__ import annotations

import time

import pytest
import requests

from tests.support.clients import RecordingClient
from tests.support.processes import wait_for
from tests.web.test_fanout import consecutive
from tests.web.webproc import start_webs, tokens_of
from ticker.bus import keys
from ticker.bus.demand import REPLICA_TTL_SECS, read_demand

pytestmark = pytest.mark.integration


def replica_id(url: str, admin_token: str) -> str:
    return requests.get(f"{url}/ws/stats", headers={"Authorization": f"Bearer {admin_token}"}, timeout=5).json()[
        "answered_by"]


def assert_exactly_once(clients: list[RecordingClient], tokens: list[int]) -> None:
    """Each client's seqs have no gap and no repeat, and over the stretch every client was
    streaming, all of them saw the same ticks."""
    for token in tokens:
        runs = [[t["seq"] for t in client.ticks_for(token)] for client in clients]
        for seqs in runs:
            assert consecutive(seqs), (token, seqs)
        low, high = max(run[0] for run in runs), min(run[-1] for run in runs)
        assert high - low >= 4, runs
        for seqs in runs:
            assert [s for s in seqs if low <= s <= high] == list(range(low, high + 1))


def test_three_replicas_deliver_exactly_once_and_survive_losing_one(
    stack, processes, service_env, workdir, make_token, database, redis
):
    webs = start_webs(processes, service_env, workdir, [f"web-{name}" for name in "abc"])
    admin = make_token("root", admin=True)
    doomed_id = replica_id(webs[0].url, admin)
    tokens = tokens_of(database, "NSE", 4, skip=200)
    clients = {web.url: [RecordingClient().connect(web.url, make_token(f"u{i}")) for i in range(2)] for web in webs}
    everyone = [client for pair in clients.values() for client in pair]
    try:
        for client in everyone:
            client.call("subscribe", {"tokens": tokens, "mode": "ltp"})
        for client in everyone:
            client.wait_for_ticks(tokens, count=6, timeout=15)
        assert_exactly_once(everyone, tokens)

        webs[0].process.kill()  # SIGKILL: no goodbye, no cleanup
        orphans = clients[webs[0].url]
        wait_for(lambda: not any(c.sio.connected for c in orphans), 10, "the orphans to notice")
        moved = [RecordingClient().connect(webs[1 + i].url, make_token(f"u{i}")) for i in range(2)]
        everyone_left = clients[webs[1].url] + clients[webs[2].url]
        for client in moved:
            everyone_left.append(client)
            asked = time.monotonic()
            client.call("subscribe", {"tokens": tokens, "mode": "ltp"})
            client.wait_for_ticks(tokens, count=1, timeout=5)
            assert time.monotonic() - asked < 0.5  # the snapshot, not the next tick
        for client in everyone_left:
            client.wait_for_ticks(tokens, count=10, timeout=15)
        assert_exactly_once(everyone_left, tokens)

        wait_for(lambda: not redis.exists(keys.replica_alive(doomed_id)), REPLICA_TTL_SECS + 5,
                 "the killed replica's demand to expire")
        read_demand(redis)  # what shards read: it drops a dead replica's leftovers
        assert doomed_id not in redis.smembers(keys.DEMAND_REPLICAS)
        assert not redis.exists(keys.demand_of(doomed_id))
    finally:
        for client in everyone:
            client.close()
