"""The shard's recorder: every frame Kite sends, as received, into a recording directory.

Off unless `RECORD_DIR` is set. A shard hands each frame it reads (binary, text, heartbeats)
to `FrameRecorder.record` before doing anything else with it; the recorder appends it, with
its receive time, to the slot's file of the current IST date (ticker.feed.recording, whose
format docs/API.md describes under "Recordings"). At the IST date change it starts a file in
the new day's directory, and deletes day directories older than `RECORD_RETENTION_DAYS`.

The recorder must never cost the shard its feed. Anything the file system refuses (disk
full, permission denied, a directory gone) is logged, counted (`errors`), and turns the
recorder off; it tries again with a new file after RETRY_SECS. The frames meanwhile are not
recorded (the `errors` count and the gap in receive times say so). The shard reports the
counters in its state hash (ticker.metrics exports them as `ticker_shard_recorded_*` and
`ticker_shard_recorder_errors_total`) and /health shows a failing recorder per slot.

The hot path is one clock read, one comparison and an append to a buffer; compression
happens in blocks (ticker.feed.recording.BUFFER_BYTES) and on `flush`, which the shard calls
once a second so a reader sees what was received up to a second ago.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from datetime import datetime, timedelta
from pathlib import Path

from ticker.clock import IST
from ticker.feed import recording

log = logging.getLogger(__name__)

RETRY_SECS = 60.0  # after a fault, the recorder tries a new file this much later
RECORDING, FAILING = "recording", "failing"  # what the shard reports as `recorder`


def next_ist_midnight(epoch_secs: float) -> float:
    """The epoch time of the next IST date change after `epoch_secs`."""
    day = datetime.fromtimestamp(epoch_secs, IST).date() + timedelta(days=1)
    return datetime(day.year, day.month, day.day, tzinfo=IST).timestamp()


def expired_days(days: list[str], today: str, retention_days: int) -> list[str]:
    """The dates among `days` (YYYY-MM-DD) older than the last `retention_days` dates up to and
    including `today`; none when `retention_days` is 0 (keep everything)."""
    if retention_days <= 0:
        return []
    oldest = (datetime.strptime(today, "%Y-%m-%d") - timedelta(days=retention_days - 1)).strftime("%Y-%m-%d")
    return [day for day in days if day < oldest]


class FrameRecorder:
    """Records one slot's frames under `directory` (see the module's docstring).

    Counters: `frames` and `bytes` (payload bytes) recorded, `errors` (faults met). `error` is
    the fault that stands now (None while recording). `clock` gives epoch seconds (tests).
    """

    def __init__(self, directory: str | Path, slot: str, retention_days: int,
                 retry_secs: float = RETRY_SECS, clock=time.time):
        self.directory = Path(directory)
        self.slot = slot
        self.retention_days = retention_days
        self.retry_secs = retry_secs
        self.clock = clock
        self.frames = self.bytes = self.errors = 0
        self.error: str | None = None
        self.path: Path | None = None  # the file being written
        self._writer: recording.RecordingWriter | None = None
        self._check_at = 0.0  # epoch secs: the next date change, or the next retry after a fault

    def record(self, opcode: int, data: bytes) -> None:
        """Append one frame as received now (ticker.feed.recording.TEXT or BINARY). Never raises."""
        now = self.clock()
        if now >= self._check_at:
            self._open(now)
        writer = self._writer
        if writer is None:
            return
        try:
            writer.write(now, opcode, data)
        except (OSError, ValueError) as exc:  # ValueError: gzip on a file a failed flush closed
            self._fail(exc, now)
            return
        self.frames += 1
        self.bytes += len(data)

    def flush(self) -> None:
        """Hand what is buffered to the file (the shard calls this once a second). Never raises."""
        if self._writer is None:
            return
        try:
            self._writer.flush()
        except (OSError, ValueError) as exc:
            self._fail(exc, self.clock())

    def close(self) -> None:
        """Finish the current file. Never raises."""
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except (OSError, ValueError) as exc:
                self._count(exc)

    def report(self) -> dict[str, object]:
        """The shard state hash's recorder fields."""
        return {"recorder": FAILING if self.error else RECORDING, "recorder_error": self.error or "",
                "recorded_frames": self.frames, "recorded_bytes": self.bytes, "recorder_errors": self.errors}

    def _open(self, now: float) -> None:
        """A new file for `now`'s IST date (the first, after a date change, or a retry after a fault)."""
        self.close()
        day = recording.trading_date(now)
        self._delete_expired(day)
        path = self.directory / day / recording.file_name(self.slot, int(now * 1000), os.getpid())
        try:
            self._writer = recording.RecordingWriter(path, self.slot, int(now * 1000))
        except OSError as exc:
            self._fail(exc, now)
            return
        self.path = path
        if self.error:
            log.info("shard %s: recording again, into %s", self.slot, path)
        self.error = None
        self._check_at = next_ist_midnight(now)

    def _delete_expired(self, today: str) -> None:
        for day in expired_days(recording.recorded_days(self.directory), today, self.retention_days):
            try:
                shutil.rmtree(self.directory / day)
                log.info("shard %s: deleted recordings of %s (kept %d days)", self.slot, day, self.retention_days)
            except FileNotFoundError:  # another shard deleted it first
                pass
            except OSError as exc:
                self._count(exc)

    def _fail(self, exc: Exception, now: float) -> None:
        """Stop recording until `now + retry_secs`: the shard streams on either way."""
        self._count(exc)
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except (OSError, ValueError):
                pass  # the same fault again: already counted
        self._check_at = now + self.retry_secs
        log.error("shard %s: recorder off for %.0fs after %s (%d faults so far)",
                  self.slot, self.retry_secs, self.error, self.errors)

    def _count(self, exc: Exception) -> None:
        self.errors += 1
        self.error = f"{type(exc).__name__}: {exc}"
