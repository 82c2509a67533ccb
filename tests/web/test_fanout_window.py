"""Which ticks reach which client, in which frame (pure logic: the sockets are stand-ins that
record what would be written)."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

from ticker.bus.ticks import encode, pack, project, unpack
from ticker.web import fanout as fanout_module
from ticker.web.fanout import Fanout

FULL = {"tradable": True, "mode": "full", "instrument_token": 0, "last_price": 10.0, "seq": 0, "epoch": 9,
        "ingest_ts": 1, "volume_traded": 5, "depth": {"buy": [], "sell": []}}


class Wire:
    def __init__(self):
        self.frames: list[list[dict]] = []
        self.busy = False
        self.broken = False

    def write(self, payload: bytes) -> None:
        event, ticks = json.loads(payload[2:])
        assert event == "ticks"
        self.frames.append(ticks)


class Queue:
    def qsize(self) -> int:
        return 0


def setup(*clients: str) -> tuple[Fanout, dict[str, Wire]]:
    wires = {sid: Wire() for sid in clients}
    sockets = {f"eio-{sid}": SimpleNamespace(wire=wire, queue=Queue(), upgraded=True) for sid, wire in wires.items()}
    fanout = Fanout(SimpleNamespace(eio=SimpleNamespace(sockets=sockets)), on_slow=lambda sid: None, slow_secs=5)
    for sid in clients:
        fanout.attach(sid, f"eio-{sid}")
    return fanout, wires


def batch(*ticks: dict) -> list:
    return unpack(pack(list(ticks), [encode(t) for t in ticks]))


def tick(token: int, seq: int, mode: str = "full") -> dict:
    return project(dict(FULL, instrument_token=token, seq=seq, last_price=float(seq)), mode)


def seqs(frame: list[dict]) -> list[tuple[int, int, str]]:
    return sorted((t["instrument_token"], t["seq"], t["mode"]) for t in frame)


def settled(fanout: Fanout, monkeypatch) -> None:
    """Past the watch that follows a subscribe and its snapshot, so ticks take the direct path."""
    for sid in fanout.clients:
        fanout.offer(sid, [])  # what the replica does when there was no snapshot to send
    later(monkeypatch, fanout_module.WATCH_SECS + 1)


def later(monkeypatch, secs: float) -> None:
    now = time.time() + secs
    monkeypatch.setattr(fanout_module.time, "time", lambda: now)


def test_each_client_gets_one_frame_with_its_tokens_in_its_mode(monkeypatch):
    fanout, wires = setup("a", "b")
    fanout.join("a", 1, "full")
    fanout.join("a", 2, "ltp")
    fanout.join("b", 2, "full")
    settled(fanout, monkeypatch)

    fanout.dispatch(batch(tick(1, 5), tick(2, 9), tick(3, 1)))
    fanout.flush()

    assert [seqs(f) for f in wires["a"].frames] == [[(1, 5, "full"), (2, 9, "ltp")]]
    assert [seqs(f) for f in wires["b"].frames] == [[(2, 9, "full")]]
    assert set(wires["a"].frames[0][1]) == set(tick(2, 9, "ltp"))  # cut down, nothing more
    assert fanout.totals["delivered"] == 3 and fanout.totals["frames"] == 2


def test_a_poorer_tick_never_reaches_a_richer_subscription(monkeypatch):
    fanout, wires = setup("a")
    fanout.join("a", 1, "full")
    settled(fanout, monkeypatch)

    fanout.dispatch(batch(tick(1, 5, "quote") | {"mode": "quote"}))
    fanout.flush()

    assert wires["a"].frames == []


def test_two_ticks_of_a_token_in_one_flush_both_go_in_order(monkeypatch):
    fanout, wires = setup("a")
    fanout.join("a", 1, "ltp")
    fanout.join("a", 2, "ltp")
    settled(fanout, monkeypatch)

    fanout.dispatch(batch(tick(1, 5), tick(2, 1)))
    fanout.dispatch(batch(tick(1, 6)))
    fanout.flush()

    assert len(wires["a"].frames) == 1
    assert [t["seq"] for t in wires["a"].frames[0] if t["instrument_token"] == 1] == [5, 6]
    assert fanout.totals["delivered"] == 3


def test_a_snapshot_racing_the_live_stream_is_never_seen_twice_or_going_back():
    fanout, wires = setup("a")
    fanout.join("a", 1, "full")
    fanout.join("a", 2, "full")

    fanout.dispatch(batch(tick(1, 8), tick(2, 3)))  # live, read before the snapshot came back
    fanout.flush()
    fanout.offer("a", [tick(1, 7), tick(2, 3)])  # the snapshot: older or the same
    fanout.dispatch(batch(tick(1, 9)))
    fanout.flush()

    sent = [t["seq"] for frame in wires["a"].frames for t in frame if t["instrument_token"] == 1]
    assert sent == [8, 9]
    assert [t["seq"] for frame in wires["a"].frames for t in frame if t["instrument_token"] == 2] == [3]


def test_the_watch_lasts_until_a_late_snapshot_comes(monkeypatch):
    fanout, wires = setup("a")
    fanout.join("a", 1, "full")
    later(monkeypatch, fanout_module.WATCH_SECS * 2)  # the snapshot's read is slow (a busy loop, Redis)

    fanout.dispatch(batch(tick(1, 8)))
    fanout.flush()
    fanout.offer("a", [tick(1, 7)])

    assert [t["seq"] for frame in wires["a"].frames for t in frame] == [8]


def test_a_token_whose_mode_changed_mid_flush_keeps_each_ticks_seq(monkeypatch):
    fanout, wires = setup("a")
    fanout.join("a", 1, "full")
    fanout.dispatch(batch(tick(1, 5)))  # full, while the client is still watched
    fanout.dispatch(batch(tick(1, 6, "ltp")))  # upstream now streams the token in ltp only
    fanout.dispatch(batch(tick(1, 7)))
    fanout.offer("a", [tick(1, 5)])  # the snapshot, read as tick 5 was being published
    fanout.flush()

    assert [(t["seq"], t["mode"]) for frame in wires["a"].frames for t in frame] == [(5, "full"), (7, "full")]


def test_a_client_that_cannot_take_a_frame_gets_the_latest_tick_per_token_later(monkeypatch):
    fanout, wires = setup("slow", "fast")
    for sid in ("slow", "fast"):
        fanout.join(sid, 1, "ltp")
    settled(fanout, monkeypatch)
    wires["slow"].busy = True

    for seq in (1, 2, 3):
        fanout.dispatch(batch(tick(1, seq)))
        assert fanout.flush() is True  # the slow client still has ticks waiting
    wires["slow"].busy = False
    assert fanout.flush() is False

    assert [seqs(f) for f in wires["slow"].frames] == [[(1, 3, "ltp")]]
    assert [seqs(f) for f in wires["fast"].frames] == [[(1, s, "ltp")] for s in (1, 2, 3)]
    assert fanout.totals["conflated"] == 2


def test_an_unsubscribed_token_stops_and_a_departed_client_is_skipped(monkeypatch):
    fanout, wires = setup("a", "b")
    fanout.join("a", 1, "ltp")
    fanout.join("a", 2, "ltp")
    fanout.join("b", 1, "ltp")
    settled(fanout, monkeypatch)

    fanout.leave("a", 2, "ltp")
    fanout.dispatch(batch(tick(1, 1), tick(2, 1)))
    fanout.detach("b")
    fanout.flush()

    assert [seqs(f) for f in wires["a"].frames] == [[(1, 1, "ltp")]]
    assert wires["b"].frames == [] and 2 not in fanout.members
