"""The shard's recorder (ticker.feed.recorder) on real files: what it records reads back with
ticker.feed.recording, it starts a new day's file at the IST date change, deletes days past the
retention, and a fault of the file system (a real ENOSPC, a directory it cannot create) is
counted, turns it off and is retried, never raised."""

from __future__ import annotations

import os
from datetime import datetime

import pytest

from ticker.clock import IST
from ticker.feed import protocol
from ticker.feed.recorder import FAILING, RECORDING, FrameRecorder, expired_days, next_ist_midnight
from ticker.feed.recording import BINARY, TEXT, file_name, read_day, read_frames, recorded_days

SLOT = "k1:0"
MIDNIGHT = datetime(2026, 3, 2, tzinfo=IST).timestamp()  # 2026-03-02 00:00 IST


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _frame(token: int, price: int) -> bytes:
    return protocol.encode_frame([protocol.encode_packet({"instrument_token": token, "last_price": price}, "ltp")])


def test_every_frame_is_recorded_with_its_receive_time_and_read_back(tmp_path):
    clock = Clock(MIDNIGHT + 3600.25)
    recorder = FrameRecorder(tmp_path, SLOT, retention_days=7, clock=clock)
    sent = [(BINARY, _frame(256265, 2_400_000)), (BINARY, protocol.HEARTBEAT), (TEXT, b'{"type":"order","data":{}}')]
    for opcode, data in sent:
        recorder.record(opcode, data)
        clock.now += 0.5
    recorder.flush()
    assert [(f.opcode, f.data) for f in read_frames(recorder.path)] == sent  # flushed: readable while open
    recorder.close()
    frames = list(read_day(tmp_path, "2026-03-02"))
    assert [f.received for f in frames] == [MIDNIGHT + 3600.25, MIDNIGHT + 3600.75, MIDNIGHT + 3601.25]
    assert {f.slot for f in frames} == {SLOT}
    assert (recorder.frames, recorder.bytes, recorder.errors) == (3, sum(len(d) for _, d in sent), 0)
    assert recorder.report()["recorder"] == RECORDING


def test_the_ist_date_change_starts_a_file_in_the_new_days_directory(tmp_path):
    clock = Clock(MIDNIGHT - 0.5)  # 23:59:59.5 IST on 2026-03-01
    recorder = FrameRecorder(tmp_path, SLOT, retention_days=7, clock=clock)
    recorder.record(BINARY, _frame(1, 100))
    clock.now = MIDNIGHT + 0.25
    recorder.record(BINARY, _frame(1, 101))
    recorder.close()
    assert recorded_days(tmp_path) == ["2026-03-01", "2026-03-02"]
    assert [f.data for f in read_day(tmp_path, "2026-03-01")] == [_frame(1, 100)]
    assert [f.data for f in read_day(tmp_path, "2026-03-02")] == [_frame(1, 101)]


def test_days_past_the_retention_are_deleted_when_a_day_starts(tmp_path):
    for day in ("2026-02-20", "2026-02-24", "2026-02-25", "2026-03-01"):
        (tmp_path / day).mkdir()
        (tmp_path / day / "old.frames.gz").write_bytes(b"")
    (tmp_path / "notes").mkdir()  # not a day: left alone
    recorder = FrameRecorder(tmp_path, SLOT, retention_days=7, clock=Clock(MIDNIGHT + 10))
    recorder.record(BINARY, protocol.HEARTBEAT)
    recorder.close()
    # Kept: the 7 dates 2026-02-24 .. 2026-03-02.
    assert recorded_days(tmp_path) == ["2026-02-24", "2026-02-25", "2026-03-01", "2026-03-02"]
    assert (tmp_path / "notes").is_dir()
    assert expired_days(["2026-01-01"], "2026-03-02", 0) == []  # 0 keeps everything


def test_a_disk_that_is_full_turns_the_recorder_off_counted_then_it_retries(tmp_path):
    clock = Clock(MIDNIGHT + 100)
    day = tmp_path / "2026-03-02"
    day.mkdir()
    # The file it is about to write is the full device: the kernel answers ENOSPC.
    (day / file_name(SLOT, int(clock.now * 1000), os.getpid())).symlink_to("/dev/full")
    recorder = FrameRecorder(tmp_path, SLOT, retention_days=7, retry_secs=30, clock=clock)
    recorder.record(BINARY, _frame(1, 100))  # the file's header reaches the disk at once: refused
    recorder.flush()
    assert (recorder.errors, recorder.frames) == (1, 0)
    assert "No space left on device" in recorder.error
    assert recorder.report()["recorder"] == FAILING
    clock.now += 10
    recorder.record(BINARY, _frame(1, 101))  # off: not recorded, not raised
    assert (recorder.errors, recorder.frames) == (1, 0)
    clock.now += 30
    recorder.record(BINARY, _frame(1, 102))  # retried: a new file
    recorder.close()
    assert recorder.error is None and recorder.errors == 1
    assert [f.data for f in read_frames(recorder.path)] == [_frame(1, 102)]


def test_a_directory_it_cannot_create_is_counted_and_retried(tmp_path):
    blocked = tmp_path / "recordings"
    blocked.write_text("a file where the directory should be")
    clock = Clock(MIDNIGHT + 100)
    recorder = FrameRecorder(blocked, SLOT, retention_days=7, retry_secs=5, clock=clock)
    for _ in range(3):
        recorder.record(BINARY, protocol.HEARTBEAT)
    assert (recorder.errors, recorder.frames) == (1, 0)  # one fault, then quiet until the retry
    blocked.unlink()
    clock.now += 5
    recorder.record(BINARY, protocol.HEARTBEAT)
    recorder.close()
    assert (recorder.errors, recorder.frames, recorder.error) == (1, 1, None)


@pytest.mark.parametrize("hour", [0, 5.5, 23.99])
def test_next_ist_midnight(hour):
    assert next_ist_midnight(MIDNIGHT + hour * 3600) == MIDNIGHT + 86400
