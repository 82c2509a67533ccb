"""Delivery as a user sees it: snapshot then live with no gap, few frames under load, a slow
client conflated then cut off without hurting the others, registry renumbering, /ws/stats."""

from __future__ import annotations

import json
import socket
import time

import pytest
import requests
import websocket

from tests.support.clients import RecordingClient
from tests.support.processes import wait_for
from tests.web.webproc import rss_kib, start_web, tokens_of
from ticker.bus import keys

pytestmark = pytest.mark.integration


@pytest.fixture
def connect(stack, make_token):
    clients = []

    def connect(user: str = "alice", url: str | None = None) -> RecordingClient:
        client = RecordingClient().connect(url or stack["url"], make_token(user))
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close()


def consecutive(seqs: list[int]) -> bool:
    return all(b == a + 1 for a, b in zip(seqs, seqs[1:], strict=False))


def test_snapshot_then_live_ticks_have_no_gap_and_no_repeat(connect, database):
    tokens = tokens_of(database, "NSE", 12, skip=20)
    early = connect("early")
    early.call("subscribe", {"tokens": tokens[:6], "mode": "ltp"})
    early.wait_for_ticks(tokens[:6], count=2)

    late = [connect(f"late{i}") for i in range(3)]
    for i, client in enumerate(late):  # each joins at a different moment of the tick cycle
        client.call("subscribe", {"tokens": tokens, "mode": "ltp"})
        time.sleep(0.09 * (i + 1))
    snapshots = 0
    for client in late:
        client.wait_for_ticks(tokens, count=4, timeout=15)
        for token in tokens:
            seqs = [tick["seq"] for tick in client.ticks_for(token)]
            assert consecutive(seqs), (token, seqs)
        for token in tokens[:6]:
            # Already streaming: the first tick is the snapshot, and says so; or, when a live tick
            # reached the connection before the snapshot was read, that newer live tick
            # (docs/API.md, "Delivery"). Never a snapshot after it.
            first, *rest = client.ticks_for(token)
            if "snapshot" in first:
                assert first["snapshot"] is True and first["age_ms"] >= 0, first
                snapshots += 1
            assert not any("snapshot" in tick or "age_ms" in tick for tick in rest)
    assert snapshots, "no late subscriber got a snapshot of a token already streaming"


def test_a_snapshot_from_hours_ago_says_how_old_it_is(connect, database, redis):
    token = tokens_of(database, "NSE", 1, skip=40)[0]
    hours_ago_ms = int(time.time() * 1000) - 3 * 3600 * 1000
    epoch = int(redis.hget(keys.EPOCH, "id"))
    redis.hset(keys.LAST_TICKS, token, json.dumps({  # what a previous session left behind
        "tradable": True, "mode": "ltp", "instrument_token": token, "last_price": 1.5, "seq": 1,
        "epoch": epoch, "ingest_ts": hours_ago_ms}))
    client = connect("hours")
    client.call("subscribe", {"tokens": [token], "mode": "ltp"})
    client.wait_for_ticks([token], count=1)
    first = client.ticks_for(token)[0]
    assert first["snapshot"] is True and first["last_price"] == 1.5
    assert first["age_ms"] >= 3 * 3600 * 1000


def test_ticks_for_many_tokens_share_frames(connect, database):
    tokens = tokens_of(database, "NSE", 64, skip=100)  # 64 tokens over many Redis channels
    alice = connect()
    alice.call("subscribe", {"tokens": tokens, "mode": "ltp"})
    alice.wait_for_ticks(tokens, count=1)
    frames_before, ticks_before = len(alice.events["ticks"]), len(alice.ticks())

    time.sleep(2.0)
    frames = len(alice.events["ticks"]) - frames_before
    ticks = len(alice.ticks()) - ticks_before
    assert ticks >= 64 * 4, ticks  # the simulator ticks each token 4 times a second
    assert ticks / frames >= 16, f"{ticks} ticks in {frames} frames"


def test_instruments_subscribed_by_name_follow_a_renumbering(connect, database, redis):
    name_token, new_token, by_number = tokens_of(database, "BSE", 3, skip=30)
    name = redis.hget(keys.REGISTRY_TOKENS, name_token)
    alice = connect()
    reply = alice.call("subscribe", {"instruments": [name], "tokens": [by_number], "mode": "quote"})
    assert reply["tokens"] == [by_number, name_token]

    notice = {"renumbered": {str(name_token): new_token, str(by_number): new_token + 1}, "removed": []}
    redis.publish(keys.REGISTRY_RELOADED, json.dumps(notice))

    moved = wait_for(lambda: [e for e in alice.events["subscribed"] if e.get("reason")], 5, "a renumbering")[0]
    assert moved["tokens"] == [new_token] and moved["mode"] == "quote" and moved["total"] == 2
    gone = [e for e in alice.events["unsubscribed"] if e.get("reason") == "instrument_renumbered"]
    assert gone == [{"tokens": [name_token], "total": 1, "reason": "instrument_renumbered"}]
    alice.wait_for_ticks([new_token], count=2)  # a subscription by number is left alone:
    assert alice.call("unsubscribe", {"tokens": [by_number, new_token]})["tokens"] == [by_number, new_token]


def test_a_token_removed_from_the_registry_is_unsubscribed(connect, database, redis):
    token = tokens_of(database, "BSE", 1, skip=40)[0]
    alice = connect()
    alice.call("subscribe", {"tokens": [token]})

    redis.publish(keys.REGISTRY_RELOADED, json.dumps({"renumbered": {}, "removed": [token]}))

    event = wait_for(lambda: alice.events["unsubscribed"], 5, "unsubscribed")[0]
    assert event == {"tokens": [token], "total": 0, "reason": "instrument_removed"}


def test_ws_stats_needs_an_admin_token_and_reports_every_replica(connect, stack, make_token, database):
    connect("stats-user").call("subscribe", {"tokens": tokens_of(database, "NSE", 2, skip=50)})
    url = f"{stack['url']}/ws/stats"

    assert requests.get(url, timeout=5).status_code == 401
    plain = requests.get(url, headers={"Authorization": f"Bearer {make_token('bob')}"}, timeout=5)
    assert plain.status_code == 403 and plain.json()["code"] == "admin_required"
    body = requests.get(url, headers={"Authorization": f"Bearer {make_token('root', admin=True)}"}, timeout=5).json()
    assert body["totals"]["replicas"] == len(body["replicas"]) >= 1
    assert body["totals"]["clients"] >= 1 and body["totals"]["subscriptions"] >= 2
    mine = next(r for r in body["replicas"] if r["replica"] == body["answered_by"])
    figures = {"clients", "subscriptions", "ticks_delivered", "frames_sent", "ticks_conflated", "ticks_dropped"}
    assert figures <= set(mine)


class StalledClient:
    """A raw Socket.IO-over-WebSocket client that subscribes and then stops reading, with a
    tiny receive buffer, like a phone that went into a tunnel."""

    def __init__(self, url: str, token: str):
        ws_url = url.replace("http", "ws", 1) + f"/socket.io/?EIO=4&transport=websocket&token={token}"
        self.ws = websocket.create_connection(ws_url, timeout=5, sockopt=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)])
        assert self.ws.recv().startswith("0")  # Engine.IO open
        self.ws.send("40")
        while not self.ws.recv().startswith("40"):  # Socket.IO connect (`connected` may come first)
            pass

    def subscribe(self, tokens: list[int], mode: str) -> None:
        self.ws.send("421" + json.dumps(["subscribe", {"tokens": tokens, "mode": mode}]))
        while not self.ws.recv().startswith("431"):  # the ack
            pass

    def closed_by_server(self) -> bool:
        """Drain what the kernel holds; True once the server has cut the connection."""
        self.ws.settimeout(0.5)
        try:
            while self.ws.recv():
                pass
        except websocket.WebSocketTimeoutException:
            return False
        except (websocket.WebSocketException, OSError):
            return True
        return True


def test_a_stalled_client_is_conflated_then_cut_off_and_the_others_do_not_notice(
    stack, processes, service_env, workdir, make_token, database
):
    web = start_web(processes, service_env, workdir, "web-slow", SLOW_CLIENT_SECS="2")
    tokens = tokens_of(database, "NFO-OPT", 400, skip=1000)
    watcher = RecordingClient().connect(web.url, make_token("watcher"))
    watcher.call("subscribe", {"tokens": tokens[:5], "mode": "ltp"})
    stalled = StalledClient(web.url, make_token("stalled"))
    stalled.subscribe(tokens, "full")
    rss_start = rss_kib(web.process.pid)

    wait_for(lambda: "disconnecting" in web.process.output(), 30, "the stalled client to be cut off")
    received = len(watcher.ticks())
    time.sleep(1.0)

    assert "slow_consumer" in web.process.output()
    assert len(watcher.ticks()) >= received + 5 * 3  # the watcher kept streaming all along
    latencies = [time.time() * 1000 - t["ingest_ts"] for t in watcher.events["ticks"][-1]]
    assert max(latencies) < 1000
    for token in tokens[:5]:
        seqs = [tick["seq"] for tick in watcher.ticks_for(token)]
        assert consecutive(seqs), seqs  # the watcher was never conflated
    assert rss_kib(web.process.pid) - rss_start < 30_000  # the stalled client's backlog stayed bounded
    wait_for(stalled.closed_by_server, 10, "the stalled connection to be closed")
    stats = requests.get(f"{web.url}/ws/stats", timeout=5,
                         headers={"Authorization": f"Bearer {make_token('root', admin=True)}"}).json()
    mine = next(r for r in stats["replicas"] if r["replica"] == stats["answered_by"])
    assert mine["ticks_conflated"] > 0 and mine["disconnected"] == {"slow_consumer": 1}
    watcher.close()
