"""Live candle delivery's rules without servers (ticker.web.live_candles): conflation per
candle, a completed candle never replaced, history before live updates, slow clients held."""

import orjson

from ticker.web.live_candles import LiveCandles

T = 408065


def message(*updates) -> bytes:
    return orjson.dumps([[T, interval, [start, 1.0, 2.0, 0.5, close, volume, 0], closed]
                         for interval, start, close, volume, closed in updates])


def make(behind=()):
    sent = []
    live = LiveCandles(lambda sid, event, data: sent.append((sid, event, data)), lambda sid: sid in behind)
    return live, sent


def test_one_update_per_candle_per_flush_and_a_closed_one_stays_closed():
    live, sent = make()
    live.subscribe("a", [T], ["minute"])
    live.dispatch(message(("minute", 60, 1.5, 10, False), ("minute", 60, 1.6, 12, False)))
    live.dispatch(message(("minute", 60, 1.7, 13, True), ("minute", 120, 1.8, 1, False)))
    live.dispatch(message(("minute", 60, 1.2, 9, False), ("second", 61, 1.0, 1, False)))  # stale, unwanted
    live.flush()
    [(sid, event, data)] = sent
    assert (sid, event) == ("a", "candles")
    assert [(c["close"], c["volume"], c["closed"]) for c in data] == [(1.7, 13, True), (1.8, 1, False)]
    assert data[0]["date"] == "1970-01-01T05:31:00+0530" and data[0]["interval"] == "minute"


def test_history_comes_first_and_updates_it_covers_are_dropped():
    live, sent = make()
    live.subscribe("a", [T], ["minute"])
    live.dispatch(message(("minute", 60, 1.5, 10, False)))  # before the history is read: covered by it
    live.begin_history("a", {(T, "minute")})
    live.dispatch(message(("minute", 60, 1.6, 12, False)))  # while it is read: newer, kept for after
    live.flush()
    assert sent == []
    live.end_history("a", [{"history": True}])
    live.flush()
    assert sent[0][2] == [{"history": True}]
    assert [c["volume"] for c in sent[1][2]] == [12]


def test_a_client_behind_waits_with_its_updates_conflated_and_unsubscribing_forgets_them():
    live, sent = make(behind={"a"})
    live.subscribe("a", [T], ["minute"])
    live.subscribe("b", [T], ["minute"])
    for volume in range(5):
        live.dispatch(message(("minute", 60, 1.5, volume, False)))
    live.flush()
    assert [(sid, len(data)) for sid, _, data in sent] == [("b", 1)]
    assert len(live.pending["a"]) == 1
    live.unsubscribe("a", [T])
    assert "a" not in live.pending and live.needed_buckets() == {(T >> 8) % 64}
    live.release("b")
    assert live.needed_buckets() == set()
