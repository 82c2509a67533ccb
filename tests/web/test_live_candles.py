"""Live candles over Socket.IO against the whole stack: a client subscribing with `candles`
gets today's candles so far, then each candle's updates (one per candle per frame at most) and
its completion, matching what the historical API later answers for the same candles."""

import os
import signal
import time
from datetime import datetime, timedelta

import pytest
from kiteconnect import KiteConnect

from tests.support.clients import RecordingClient
from tests.support.processes import wait_for
from ticker.bus import keys
from ticker.candles import store
from ticker.candles.build import Candle, day_of, kite_time
from ticker.clock import IST
from ticker.db import engine_for

pytestmark = pytest.mark.integration

INFY = 408065


def candles_of(client: RecordingClient) -> list[list[dict]]:
    with client.lock:
        return list(client.events["candles"])


def test_subscribers_get_the_day_so_far_then_live_and_closed_candles(stack, make_token):
    jwt = make_token("candle-watcher")
    warm = RecordingClient().connect(stack["url"], jwt)  # makes the shard stream the token in full mode
    watcher = RecordingClient().connect(stack["url"], jwt)
    try:
        warm.call("subscribe", {"tokens": [INFY], "mode": "full"})
        warm.wait_for_ticks([INFY], count=12, timeout=20)
        reply = watcher.call("subscribe", {"tokens": [INFY], "mode": "quote", "candles": ["second", "minute"]})
        assert reply["candles"] == ["second", "minute"] and reply["tokens"] == [INFY]
        wait_for(lambda: sum(1 for frame in candles_of(watcher)[1:] for c in frame  # after the history
                             if c["interval"] == "second" and c["closed"]) >= 6, 20, "closed second candles")
        frames = candles_of(watcher)
    finally:
        warm.close()
        watcher.close()
    history, live = frames[0], [c for frame in frames[1:] for c in frame]
    assert history and all(c["instrument_token"] == INFY for c in history)
    for interval in ("second", "minute"):  # each series oldest first, its forming candle (if any) last
        rows = [c for c in history if c["interval"] == interval]
        assert [c["date"] for c in rows] == sorted(c["date"] for c in rows)
        assert all(c["closed"] for c in rows[:-1])
    for frame in frames[1:]:  # at most one update per candle per frame
        assert len({(c["interval"], c["date"]) for c in frame}) == len(frame)
    minute = [c for c in live if c["interval"] == "minute"]
    pairs = zip(minute, minute[1:], strict=False)
    assert minute and all(a["volume"] <= b["volume"] for a, b in pairs if a["date"] == b["date"])
    closed = {c["date"]: c for c in live if c["interval"] == "second" and c["closed"]}
    kite = KiteConnect(api_key="any", root=stack["url"])
    kite.set_access_token(jwt)
    now = datetime.now(IST).replace(tzinfo=None, microsecond=0)
    wait_for(lambda: len(kite.historical_data(INFY, now - timedelta(minutes=5), now, "second", oi=True)) > 0, 10,
             "stored second candles")
    stored = {r["date"].strftime("%Y-%m-%dT%H:%M:%S%z"): r
              for r in kite.historical_data(INFY, now - timedelta(minutes=5), now, "second", oi=True)}
    compared = [d for d in closed if d in stored]
    assert len(compared) >= 5, (sorted(closed), sorted(stored)[-12:])
    for date in compared:
        assert [closed[date][k] for k in ("open", "high", "low", "close", "volume", "oi")] == [
            stored[date][k] for k in ("open", "high", "low", "close", "volume", "oi")]


def test_a_bad_candles_list_is_refused(stack, make_token):
    client = RecordingClient().connect(stack["url"], make_token())
    try:
        reply = client.call("subscribe", {"tokens": [INFY], "candles": ["hour"]})
    finally:
        client.close()
    assert reply["error"]["code"] == "bad_request" and "minute" in reply["error"]["message"]


def test_candle_subscribers_are_told_when_the_builder_stops_and_when_it_is_back(stack, make_token):
    """A builder that stops reporting (here frozen with SIGSTOP: stuck, as a process can be)
    is a fault the clients holding candles are told about, with a code, and told again when
    it is over; their candle subscriptions are kept and updates flow again."""
    builder = stack["candles"]
    watcher = RecordingClient().connect(stack["url"], make_token("candle-outage"))
    watcher.sio.on("candles_restored", lambda data: watcher.events["candles_restored"].append(data))
    try:
        watcher.call("subscribe", {"tokens": [INFY], "mode": "full", "candles": ["second"]})
        wait_for(lambda: len(candles_of(watcher)) >= 3, 20, "live candles")
        os.kill(builder.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: any(e.get("code") == "candles_unavailable" for e in watcher.events["error"]), 15,
                     "candles_unavailable")
        finally:
            os.kill(builder.pid, signal.SIGCONT)
        told = next(e for e in watcher.events["error"] if e.get("code") == "candles_unavailable")
        assert told["reason"] == "builder_down", told
        wait_for(lambda: watcher.events["candles_restored"], 15, "candles_restored")
        after = len(candles_of(watcher))
        wait_for(lambda: len(candles_of(watcher)) > after, 15, "live candles again")
    finally:
        watcher.close()


def test_the_day_so_far_includes_the_candles_only_postgresql_still_holds(stack, database, redis, make_token):
    """Redis lost today's lists (a restart, a failover) while PostgreSQL kept the completed
    candles: a new subscriber's history has them, as the historical API does."""
    token = INFY
    day_start = int(time.time() + 19_800) // 86_400 * 86_400 - 19_800  # 00:00 IST today
    kept = Candle(token, "minute", [day_start + 3_600, 101.5, 102.0, 101.0, 101.75, 900, 0], closed=True)
    store.write(engine_for(database), [kept])
    redis.delete(keys.candles_of(store.day_name(day_of(kept.start)), "minute", token))
    watcher = RecordingClient().connect(stack["url"], make_token("after-redis-loss"))
    try:
        watcher.call("subscribe", {"tokens": [token], "mode": "quote", "candles": ["minute"]})
        wait_for(lambda: candles_of(watcher), 10, "the day so far")
        history = candles_of(watcher)[0]
    finally:
        watcher.close()
    first = next(c for c in history if c["instrument_token"] == token)
    assert (first["date"], first["open"], first["close"], first["volume"], first["closed"]) == (
        kite_time(kept.start), 101.5, 101.75, 900, True), history
