"""Recordings of the raw frames a shard receives from Kite: the file format, a writer and readers.

A recording lets the whole service run on real market data outside market hours: the
simulator replays it through Kite's own protocol (`flask sim run --replay`), and tests of
anything built from ticks (candles) read the same frames the shard saw.

Format (version 1), documented in docs/API.md ("Recordings"):

- A recording directory holds one directory per IST trading date, `YYYY-MM-DD/`, and in it one
  file per writer: `<slot>-<started epoch ms>-<pid>.frames.gz`. A shard restarted mid-day
  starts a new file; a day is all its files, merged by receive time (`read_day`).
- Each file is a gzip stream (RFC 1952). It begins with one line of JSON, the header:
  `{"format": "ticker-frames", "version": 1, "slot": "<slot>", "started_ms": <int>}` and `\\n`.
- Then records, each `>dBI` (13 bytes: receive time as epoch seconds, a float64; the
  WebSocket opcode, 1 for a text frame and 2 for a binary one, RFC 6455 section 5.2; the
  payload's length in bytes, a uint32), followed by the payload as Kite sent it.
- A file cut short (a process killed mid-write) is read up to its last whole record: the
  reader stops there without error, since everything before it is intact. A file cut short
  before its header's newline (empty, just created) holds no frames.

Pure file I/O, no Redis, no network.
"""

from __future__ import annotations

import gzip
import heapq
import json
import os
import struct
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from ticker.clock import IST

FORMAT = "ticker-frames"
VERSION = 1
SUFFIX = ".frames.gz"
TEXT, BINARY = 0x1, 0x2  # WebSocket opcodes (RFC 6455, 5.2), as the shard's connection reads them
_RECORD = struct.Struct(">dBI")
_HEADER_MAX_BYTES = 4096
COMPRESS_LEVEL = 1  # the shard's hot path pays for this: the fastest gzip, ticks about half their size (BENCHMARKS.md)
# Records are gathered and compressed in blocks this large: one zlib call per block rather than
# two per frame (a heartbeat is one byte) keeps the shard's cost per frame small.
BUFFER_BYTES = 64 * 1024


class RecordingError(ValueError):
    """The file is not a recording of this format and version."""


@dataclass(frozen=True, slots=True)
class RecordedFrame:
    """One frame as a shard received it: `received` epoch seconds, `slot`, WebSocket `opcode`
    (TEXT or BINARY) and the `data` bytes Kite sent."""

    received: float
    slot: str
    opcode: int
    data: bytes


def trading_date(epoch_secs: float) -> str:
    """The IST calendar date (`YYYY-MM-DD`) of an epoch time: the day directory it belongs in."""
    return datetime.fromtimestamp(epoch_secs, IST).strftime("%Y-%m-%d")


class RecordingWriter:
    """Appends frames to one recording file, in blocks of BUFFER_BYTES. `write`, `flush` and
    `close` raise OSError when the disk refuses; `close` finishes the gzip stream (a file
    never closed is still readable up to its last whole record flushed)."""

    def __init__(self, path: Path, slot: str, started_ms: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.slot = slot
        self._file = gzip.open(self.path, "wb", compresslevel=COMPRESS_LEVEL)
        header = {"format": FORMAT, "version": VERSION, "slot": slot,
                  "started_ms": started_ms if started_ms is not None else int(time.time() * 1000)}
        self._file.write(json.dumps(header).encode() + b"\n")
        self._file.flush()  # a reader of the day finds a recording in every file from the start
        self._buffer = bytearray()

    def write(self, received: float, opcode: int, data: bytes) -> None:
        buffer = self._buffer
        buffer += _RECORD.pack(received, opcode, len(data))
        buffer += data
        if len(buffer) >= BUFFER_BYTES:
            self._drain()

    def _drain(self) -> None:
        buffer, self._buffer = self._buffer, bytearray()
        self._file.write(buffer)

    def flush(self) -> None:
        """Hands everything written so far to the OS, whole records in a complete compressed
        block (a reader then sees them all)."""
        self._drain()
        self._file.flush()

    def close(self) -> None:
        try:
            self._drain()
        finally:
            self._file.close()


def file_name(slot: str, started_ms: int, pid: int | None = None) -> str:
    """`<slot>-<started_ms>-<pid>.frames.gz`; a slot's name never contains a path separator."""
    if "/" in slot or os.sep in slot:
        raise ValueError(f"slot {slot!r} cannot name a file")
    return f"{slot}-{started_ms}-{pid if pid is not None else os.getpid()}{SUFFIX}"


def write_recording(path: Path, slot: str, frames: Iterable[tuple[float, int, bytes]]) -> Path:
    """Writes `(received, opcode, data)` frames into a new recording file at `path` (for
    tools and tests that make recordings); returns `path`."""
    writer = RecordingWriter(path, slot)
    try:
        for received, opcode, data in frames:
            writer.write(received, opcode, data)
    finally:
        writer.close()
    return Path(path)


def read_frames(path: Path) -> Iterator[RecordedFrame]:
    """The frames of one recording file, in the order they were written. Raises
    RecordingError when the file is not a recording of this format; a file cut short ends at
    its last whole record."""
    with gzip.open(path, "rb") as stream:
        slot = _read_header(stream, path)
        if slot is None:
            return  # cut short before its header was whole: nothing was recorded in it
        try:
            yield from _records(stream, slot)
        except (EOFError, zlib.error, gzip.BadGzipFile):
            return  # cut short: everything before this point was whole


def _read_header(stream: BinaryIO, path: Path) -> str | None:
    try:
        line = stream.readline(_HEADER_MAX_BYTES)
    except (EOFError, zlib.error):  # the gzip stream ends early: cut short
        return None
    except OSError as exc:  # gzip.BadGzipFile: not gzip at all
        raise RecordingError(f"{path}: not a frame recording ({exc})") from exc
    if not line.endswith(b"\n") and len(line) < _HEADER_MAX_BYTES:
        return None
    try:
        header = json.loads(line)
    except ValueError as exc:
        raise RecordingError(f"{path}: not a frame recording ({exc})") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("version") != VERSION:
        raise RecordingError(f"{path}: not a {FORMAT} version {VERSION} recording: {header!r:.200}")
    return str(header.get("slot", ""))


def _records(stream: BinaryIO, slot: str) -> Iterator[RecordedFrame]:
    while True:
        head = stream.read(_RECORD.size)
        if len(head) < _RECORD.size:
            return
        received, opcode, length = _RECORD.unpack(head)
        data = stream.read(length)
        if len(data) < length:
            return
        yield RecordedFrame(received, slot, opcode, data)


def day_files(directory: Path, day: str) -> list[Path]:
    """The recording files of one IST date (`YYYY-MM-DD`) under a recording directory."""
    return sorted((Path(directory) / day).glob(f"*{SUFFIX}"))


def check_day(directory: Path, day: str) -> list[Path]:
    """The files of one IST date, each checked to begin as a recording of this format. Raises
    RecordingError naming the first that does not (not gzip, another format or version)."""
    files = day_files(directory, day)
    for path in files:
        try:
            with gzip.open(path, "rb") as stream:
                _read_header(stream, path)
        except (OSError, EOFError, zlib.error) as exc:
            raise RecordingError(f"{path}: not a frame recording ({exc})") from exc
    return files


def read_day(directory: Path, day: str) -> Iterator[RecordedFrame]:
    """Every frame of one IST date, from all its files (all slots, every restart), merged in
    order of receive time. Frames of one file keep their order."""
    return heapq.merge(*(read_frames(path) for path in day_files(directory, day)), key=lambda f: f.received)


def recorded_days(directory: Path) -> list[str]:
    """The dates (`YYYY-MM-DD`, ascending) a recording directory holds."""
    root = Path(directory)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and _is_date(p.name))


def _is_date(name: str) -> bool:
    try:
        datetime.strptime(name, "%Y-%m-%d")
    except ValueError:
        return False
    return True
