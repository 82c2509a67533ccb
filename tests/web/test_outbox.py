"""Per-client batching and conflation (pure logic)."""

from __future__ import annotations

import json

from ticker.web.outbox import Outbox, ticks_message

EPOCH = 1795666503123  # the bus epoch the ticks count in (ticker.bus.epoch)


def tick(token: int, seq: int) -> bytes:
    return json.dumps({"instrument_token": token, "seq": seq}).encode()


def seqs(encoded: list[bytes]) -> list[tuple[int, int]]:
    return [(t["instrument_token"], t["seq"]) for t in map(json.loads, encoded)]


def test_a_client_that_keeps_up_gets_every_tick_in_one_frame_in_order():
    outbox = Outbox()
    for seq in (1, 2, 3):
        outbox.add(10, (EPOCH, seq), 1000 + seq, tick(10, seq))
        outbox.add(20, (EPOCH, seq), 1000 + seq, tick(20, seq))

    assert outbox.size == 6 and outbox.oldest_ingest_ms == 1001
    assert sorted(seqs(outbox.take())) == [(10, 1), (10, 2), (10, 3), (20, 1), (20, 2), (20, 3)]
    assert outbox.size == 0 and outbox.take() == []


def test_a_client_behind_keeps_only_the_latest_tick_per_token_and_counts_the_rest():
    outbox = Outbox()
    for seq in (1, 2, 3):
        outbox.add(10, (EPOCH, seq), 0, tick(10, seq))
    outbox.add(20, (EPOCH, 1), 0, tick(20, 1))

    assert outbox.fall_behind(now=100.0) == 2
    assert outbox.add(10, (EPOCH, 4), 0, tick(10, 4)) == 1
    assert outbox.add(20, (EPOCH, 2), 0, tick(20, 2)) == 1
    assert outbox.behind_for(103.5) == 3.5
    assert sorted(seqs(outbox.take())) == [(10, 4), (20, 2)]
    assert outbox.behind_for(200.0) == 0.0  # caught up


def test_a_just_subscribed_token_never_gets_a_tick_already_queued_or_older():
    # A snapshot read while the live stream already queued the same or a newer tick.
    outbox = Outbox()
    outbox.watch(10, until=100.0)
    outbox.add(10, (EPOCH, 5), 0, tick(10, 5))
    assert outbox.add(10, (EPOCH, 5), 0, tick(10, 5)) == 0
    assert outbox.add(10, (EPOCH, 4), 0, tick(10, 4)) == 0
    outbox.take()
    outbox.add(10, (EPOCH, 5), 0, tick(10, 5))
    assert outbox.take() == []
    outbox.add(10, (EPOCH, 6), 0, tick(10, 6))
    assert seqs(outbox.take()) == [(10, 6)]


def test_a_new_epoch_restarts_the_sequence_and_is_newer_whatever_its_seq():
    # Redis lost its state under a watched token: the live stream starts again at seq 1 in a
    # later epoch; a snapshot of the old epoch arriving after it is older.
    outbox = Outbox()
    outbox.watch(10, until=100.0)
    outbox.add(10, (EPOCH, 946), 0, tick(10, 946))
    assert outbox.add(10, (EPOCH + 5000, 1), 0, tick(10, 1)) == 0
    assert outbox.add(10, (EPOCH, 947), 0, tick(10, 947)) == 0
    assert seqs(outbox.take()) == [(10, 946), (10, 1)]


def test_the_watch_ends_and_with_it_the_seq_memory():
    outbox = Outbox()
    outbox.watch(10, until=100.0)
    outbox.add(10, (EPOCH, 5), 0, tick(10, 5))
    assert outbox.watching(now=99.0)
    assert not outbox.watching(now=100.0)
    outbox.take()
    outbox.add(10, (EPOCH, 5), 0, tick(10, 5))  # past the watch nothing is remembered (nor needs to be)
    assert seqs(outbox.take()) == [(10, 5)]


def test_unsubscribing_forgets_the_token():
    outbox = Outbox()
    outbox.watch(10, until=100.0)
    outbox.add(10, (EPOCH, 5), 0, tick(10, 5))
    outbox.add(20, (EPOCH, 1), 0, tick(20, 1))
    outbox.forget([10])

    assert seqs(outbox.take()) == [(20, 1)]
    outbox.add(10, (EPOCH, 1), 0, tick(10, 1))  # subscribed again later: its seq memory started over
    assert seqs(outbox.take()) == [(10, 1)]


def test_the_message_is_a_socketio_ticks_event_with_the_encoded_ticks():
    message = ticks_message([tick(10, 1), tick(20, 2)])
    assert message.startswith(b"42")  # Engine.IO MESSAGE, Socket.IO EVENT, default namespace
    ticks = [{"instrument_token": 10, "seq": 1}, {"instrument_token": 20, "seq": 2}]
    assert json.loads(message[2:]) == ["ticks", ticks]
