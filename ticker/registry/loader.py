"""Reload the registry from Kite's instruments dump into PostgreSQL and its Redis mirror.

The CLI (`flask instruments load`), beat (`tasks.registry.reload_registry`) and the tests use
`reload_instruments`. After a successful reload the Redis mirror is brought to the new registry
(by the day's changes when it holds the previous one, else whole; see ticker.registry.mirror),
the registry version bumped (replicas drop their caches) and a notice published on
`keys.REGISTRY_RELOADED` saying which tokens were renumbered or removed, so by-symbol
subscriptions follow.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import requests
from flask import Flask
from sqlalchemy import func, select

from ticker.bus import keys
from ticker.bus.connection import redis_client
from ticker.db import session_for
from ticker.registry.instruments import MirrorUpdate, ReloadReport, replace_from_dump
from ticker.registry.models import Instrument

log = logging.getLogger(__name__)

FETCH_TIMEOUT_SECS = (5, 60)  # connect, then between bytes: the dump is ~10 MB
LOGGED_CHANGES = 200  # changed tokens listed in the log per kind; counts are always complete

Progress = Callable[[int], None]  # called with the bytes received since the last call


def dump_lines(api_root: str, progress: Progress | None = None) -> Iterator[str]:
    """Stream the instruments CSV from Kite (or the simulator), line by line with newlines."""
    with requests.get(f"{api_root.rstrip('/')}/instruments", stream=True, timeout=FETCH_TIMEOUT_SECS,
                      headers={"X-Kite-Version": "3"}) as response:
        response.raise_for_status()
        response.encoding = "utf-8"
        tail = ""
        for chunk in response.iter_content(chunk_size=1 << 16, decode_unicode=True):
            if progress:
                progress(len(chunk))
            lines = (tail + chunk).split("\n")
            tail = lines.pop()
            for line in lines:
                yield line + "\n"
        if tail:
            yield tail  # no newline: validation refuses a dump cut short mid-row


def dump_size(api_root: str) -> int | None:
    """The dump's size in bytes if Kite announces it (for a progress bar)."""
    response = requests.head(f"{api_root.rstrip('/')}/instruments", timeout=FETCH_TIMEOUT_SECS)
    length = response.headers.get("Content-Length")
    return int(length) if response.ok and length else None


def publish_reload(client, report: ReloadReport) -> None:
    """Swap the Redis mirror's consumers over: bump the version and announce the changes.
    The only publisher of REGISTRY_RELOADED."""
    client.incr(keys.REGISTRY_VERSION)
    client.publish(keys.REGISTRY_RELOADED, json.dumps(report.notice()))


def log_report(report: ReloadReport) -> None:
    log.info("instrument registry reloaded: %s", report.summary())
    for bad in report.bad_rows[:LOGGED_CHANGES]:
        log.warning("instruments dump %s (skipped)", bad)
    changes: dict[str, Any] = {
        "renumbered": list(report.renumbered.items()), "removed": report.removed,
        "added": report.added if len(report.added) < report.rows else [],  # not a first load's every row
        "renamed": list(report.resymbolled.items()),
    }
    for kind, items in changes.items():
        if items:
            log.info("instruments %s (%d): %s%s", kind, len(items), items[:LOGGED_CHANGES],
                     " ..." if len(items) > LOGGED_CHANGES else "")


RELOAD_JOB = "registry_reload"  # the job name /health lists its last run under (ticker.jobs)
RELOAD_LOCK_SECS = 600  # longer than any load takes; a crashed loader's lock expires by itself


def reload_instruments(app: Flask, progress: Progress | None = None, min_ratio: float | None = None,
                       log_summary: bool = True) -> ReloadReport:
    """Fetch, validate and swap in the dump; refresh the mirror and announce the changes, and
    log them unless `log_summary` is False (a caller that prints them itself). Raises
    DumpError (the registry unchanged) for an unusable dump."""
    config = app.config
    kwargs = {} if min_ratio is None else {"min_ratio": min_ratio}
    client = redis_client(config["REDIS_URL"])
    mirror = MirrorUpdate(client)
    with session_for(config["DATABASE_URL"]) as session:
        report = replace_from_dump(session, dump_lines(config["KITE_API_ROOT"], progress), mirror, **kwargs)
    mirror.finish(report.symbols, report.fingerprint)  # exactly what was committed
    publish_reload(client, report)
    if log_summary:
        log_report(report)
    return report


def load_instruments(app: Flask) -> int:
    """Reload the registry; returns the instrument count (kept for existing callers)."""
    return reload_instruments(app).rows


def registry_size(app: Flask) -> int:
    with session_for(app.config["DATABASE_URL"]) as session:
        return session.scalar(select(func.count()).select_from(Instrument)) or 0
