"""One tick, end to end: simulator → shard (Celery) → Redis → web replica → Socket.IO client."""

from __future__ import annotations

import time

import pytest
import requests
from sqlalchemy import text

from tests.support.clients import RecordingClient
from ticker.db import engine_for

pytestmark = pytest.mark.integration


def instruments(database: str, segment: str, count: int) -> list[tuple[int, float]]:
    """(token, tick size) of `count` instruments of a segment in the loaded registry."""
    with engine_for(database).connect() as connection:
        rows = connection.execute(
            text("SELECT instrument_token, tick_size FROM instruments WHERE segment = :s ORDER BY 1 LIMIT :n"),
            {"s": segment, "n": count},
        )
        return [(token, float(tick)) for token, tick in rows]


def sent_by_sim(sim: str, token: int) -> list[dict]:
    return requests.get(f"{sim}/_sim/sent", params={"token": token}, timeout=5).json()


def on_tick_grid(price: float, tick_size: float) -> bool:
    steps = price / tick_size
    return abs(steps - round(steps)) < 1e-6


@pytest.fixture
def client(stack, make_token):
    clients = []

    def connect(user: str = "alice") -> RecordingClient:
        recording = RecordingClient().connect(stack["url"], make_token(user))
        clients.append(recording)
        return recording

    yield connect
    for recording in clients:
        recording.close()


def test_subscriber_receives_what_the_simulator_sent_for_its_tokens_only(client, sim, database):
    equities = instruments(database, "NSE", 3)
    other = instruments(database, "BSE", 1)[0][0]
    alice, bob = client("alice"), client("bob")
    tokens = [token for token, _ in equities]

    reply = alice.call("subscribe", {"tokens": tokens, "mode": "quote"})
    bob.call("subscribe", {"tokens": [other], "mode": "quote"})

    assert reply == {"tokens": tokens, "mode": "quote", "total": 3, "rejected": []}
    alice.wait_for_ticks(tokens, count=3, timeout=10)
    bob.wait_for_ticks([other], count=1, timeout=10)
    assert {tick["instrument_token"] for tick in alice.ticks()} == set(tokens)
    for token, tick_size in equities:
        sent = {(t["last_price"], t["volume_traded"]) for t in sent_by_sim(sim, token)}
        for tick in alice.ticks_for(token):
            assert tick["mode"] == "quote"
            assert (tick["last_price"], tick["volume_traded"]) in sent
            assert on_tick_grid(tick["last_price"], tick_size)
            assert tick["ohlc"]["low"] <= tick["last_price"] <= tick["ohlc"]["high"]
            assert "depth" not in tick


def test_ticks_carry_monotonic_seq_and_ingest_time(client, database):
    token = instruments(database, "NSE", 5)[4][0]
    alice = client()
    alice.call("subscribe", {"tokens": [token]})
    alice.wait_for_ticks([token], count=4)

    ticks = alice.ticks_for(token)
    seqs = [tick["seq"] for tick in ticks]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert all(isinstance(tick["ingest_ts"], int) and tick["ingest_ts"] > 1.7e12 for tick in ticks)


def test_each_client_gets_the_mode_it_asked_for(client, database):
    token = instruments(database, "NSE", 6)[5][0]
    ltp, full = client("ltp-user"), client("full-user")
    ltp.call("subscribe", {"tokens": [token], "mode": "ltp"})
    full.call("subscribe", {"tokens": [token], "mode": "full"})

    full.wait_for_ticks([token], count=2)
    ltp.wait_for_ticks([token], count=2)
    ltp_fields = {"tradable", "mode", "instrument_token", "last_price", "seq", "epoch", "ingest_ts"}
    assert all(set(t) - {"snapshot", "age_ms"} == ltp_fields for t in ltp.ticks_for(token))
    assert all(t["mode"] == "full" and len(t["depth"]["buy"]) == 5 for t in full.ticks_for(token)[-1:])


def test_new_subscriber_gets_the_last_tick_at_once(client, database):
    token = instruments(database, "NSE", 7)[6][0]
    first = client("first")
    first.call("subscribe", {"tokens": [token]})
    first.wait_for_ticks([token], count=1)

    late = client("late")
    late.call("subscribe", {"tokens": [token]})
    late.wait_for_ticks([token], count=1, timeout=0.5)  # well before the next tick is due


def test_unsubscribe_stops_the_ticks(client, database):
    token = instruments(database, "NSE", 8)[7][0]
    alice = client()
    alice.call("subscribe", {"tokens": [token]})
    alice.wait_for_ticks([token], count=1)

    reply = alice.call("unsubscribe", {"tokens": [token]})
    received = len(alice.ticks_for(token))
    time.sleep(1.0)
    assert reply == {"tokens": [token], "total": 0}
    assert len(alice.ticks_for(token)) == received


def test_health_reports_every_dependency(stack):
    body = requests.get(f"{stack['url']}/health", timeout=5).json()
    assert body["status"] == "ok"
    assert {"redis", "database", "shards", "registry"} <= set(body["checks"])
    assert body["checks"]["registry"]["instruments"] > 90_000
    pool = body["checks"]["shards"]["pool"]
    assert pool["capacity"] == 3 * 3000 and pool["assigned"] <= pool["capacity"] and pool["overflow"] == 0
