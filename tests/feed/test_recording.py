"""The frame recording format (ticker.feed.recording): what is written is read back, whole."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import ROOT
from ticker.feed import protocol
from ticker.feed.recording import (
    BINARY,
    TEXT,
    RecordingError,
    RecordingWriter,
    read_day,
    read_frames,
    recorded_days,
    trading_date,
    write_recording,
)


def _frame(token: int, price: int) -> bytes:
    return protocol.encode_frame([protocol.encode_packet({"instrument_token": token, "last_price": price}, "ltp")])


def test_frames_are_read_back_as_written(tmp_path):
    frames = [(1_764_480_000.125, BINARY, _frame(256265, 2_400_000)), (1_764_480_000.5, TEXT, b'{"type":"error"}'),
              (1_764_480_001.0, BINARY, b"\x00")]
    path = write_recording(tmp_path / "2025-11-30" / "a-1-2.frames.gz", "k1:0", frames)
    read = list(read_frames(path))
    assert [(f.received, f.opcode, f.data) for f in read] == frames
    assert {f.slot for f in read} == {"k1:0"}
    assert protocol.parse_frame(read[0].data)[0]["last_price"] == 24000.0


def test_a_file_cut_short_reads_up_to_its_last_whole_record(tmp_path):
    frames = [(1000.0 + i, BINARY, _frame(256265, 100 + i)) for i in range(50)]
    path = write_recording(tmp_path / "whole.frames.gz", "s", frames)
    raw = gzip.decompress(path.read_bytes())
    cut = tmp_path / "cut.frames.gz"
    cut.write_bytes(gzip.compress(raw[: len(raw) - 5]))  # the last record's payload is short
    assert [f.data for f in read_frames(cut)] == [data for _, _, data in frames[:-1]]
    half = tmp_path / "half.frames.gz"
    half.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # the gzip stream itself ends early
    assert 0 < len(list(read_frames(half))) < 50


def test_a_file_of_another_format_is_refused(tmp_path):
    path = tmp_path / "x.frames.gz"
    path.write_bytes(gzip.compress(b'{"format": "something-else"}\n'))
    with pytest.raises(RecordingError):
        list(read_frames(path))


def test_a_file_cut_short_before_its_header_holds_no_frames(tmp_path):
    (tmp_path / "empty.frames.gz").write_bytes(b"")  # created, nothing written yet
    (tmp_path / "torn.frames.gz").write_bytes(gzip.compress(b'{"format": "ticker-fr')[:12])
    assert list(read_frames(tmp_path / "empty.frames.gz")) == list(read_frames(tmp_path / "torn.frames.gz")) == []
    (tmp_path / "plain.frames.gz").write_bytes(b"not gzip at all\n")
    with pytest.raises(RecordingError):
        list(read_frames(tmp_path / "plain.frames.gz"))


def test_a_new_file_is_readable_before_its_first_frame(tmp_path):
    writer = RecordingWriter(tmp_path / "new.frames.gz", "s")
    assert list(read_frames(tmp_path / "new.frames.gz")) == []
    writer.write(1.0, BINARY, b"\x00")
    writer.flush()
    assert [f.data for f in read_frames(tmp_path / "new.frames.gz")] == [b"\x00"]
    writer.close()


def test_a_day_merges_its_files_by_receive_time(tmp_path):
    day = trading_date(1_764_480_000)
    write_recording(tmp_path / day / "a.frames.gz", "a", [(10.0, BINARY, b"a1"), (30.0, BINARY, b"a2")])
    write_recording(tmp_path / day / "b.frames.gz", "b", [(20.0, BINARY, b"b1"), (40.0, BINARY, b"b2")])
    (tmp_path / "notes").mkdir()
    assert [(f.slot, f.data) for f in read_day(tmp_path, day)] == [("a", b"a1"), ("b", b"b1"), ("a", b"a2"),
                                                                   ("b", b"b2")]
    assert recorded_days(tmp_path) == [day]


def test_the_day_is_the_ist_date():
    assert trading_date(1_764_441_000) == "2025-11-30"  # 2025-11-29T18:30Z is midnight in IST
    assert trading_date(1_764_440_999) == "2025-11-29"


def test_a_replay_of_a_day_with_a_file_that_is_not_a_recording_says_which_at_start(tmp_path):
    day = "2025-11-28"
    write_recording(tmp_path / day / "good.frames.gz", "s", [(1.0, BINARY, b"\x00")])
    (tmp_path / day / "bad.frames.gz").write_bytes(b"garbage, not gzip")
    flask = str(Path(sys.executable).parent / "flask")
    for argv in ([sys.executable, "-m", "ticker.sim", "--replay", str(tmp_path)],
                 [flask, "--app", "ticker", "sim", "run", "--replay", str(tmp_path)]):
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert result.returncode == 2, result.stderr
        assert "bad.frames.gz: not a frame recording" in result.stderr and "Traceback" not in result.stderr
    missing = subprocess.run([sys.executable, "-m", "ticker.sim", "--replay", str(tmp_path / "nowhere")],
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert missing.returncode == 2 and "no such directory" in missing.stderr, missing.stderr
