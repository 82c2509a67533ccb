"""What the trading-day run watches besides its clients: each replica's /health, the
simulator's connection counts, the Socket.IO message queue, CPU time and the kernel's listen
queues. Each poller runs in a thread of its own and keeps timed samples."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import redis as redis_lib

from bench.chaos_stack import Stack
from ticker.bus import keys

PROBE_TIMEOUT_SECS = 5.0  # a load balancer's health probe commonly gives up after this
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # /proc's unit of CPU time


class Monitor:
    """Polls a source in a thread every `interval` seconds, keeping (time, value) samples."""

    def __init__(self, source: Callable[[], object], interval: float):
        self.samples: list[tuple[float, object]] = []
        self._source, self._interval, self._stop = source, interval, threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.samples.append((time.time(), self._source()))
            except Exception as exc:  # noqa: BLE001  (an unreadable sample is a sample)
                self.samples.append((time.time(), exc))

    def between(self, start: float, end: float) -> list[object]:
        return [value for at, value in self.samples if start <= at <= end]

    def stop(self) -> None:
        self._stop.set()


class QueueWatch:
    """Counts the messages on the Socket.IO message queue (the control plane) by their method,
    with their times: what a fault makes replicas tell each other."""

    def __init__(self, redis_port: int):
        self.seen: list[tuple[float, str]] = []
        self._port, self._stop = redis_port, threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except (redis_lib.RedisError, OSError):  # Redis restarting: listen again
                self._stop.wait(0.5)

    def _listen(self) -> None:
        pubsub = redis_lib.Redis(port=self._port, socket_timeout=5).pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(keys.SOCKETIO_CHANNEL)
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=1.0)
            if message is not None:
                self.seen.append((time.time(), _method(message["data"])))

    def between(self, start: float, end: float) -> Counter:
        return Counter(method for at, method in self.seen if start <= at <= end)

    def stop(self) -> None:
        self._stop.set()


def _method(data: bytes) -> str:
    try:
        return str(json.loads(data).get("method"))
    except (ValueError, AttributeError):
        return "undecodable"


def timed_health(stack: Stack, name: str) -> tuple[int | None, dict, float]:
    """The replica's /health and how long it took to answer (or to give up)."""
    begun = time.monotonic()
    code, body = stack.health(name)
    return code, body, time.monotonic() - begun


def health_label(code: int | None, body: dict, secs: float = 0.0) -> str:
    """`503 unavailable [shards]`: the status and the checks that failed (or are degraded); marked
    when it took longer than a load balancer's probe waits."""
    slow = f" (slower than {PROBE_TIMEOUT_SECS:.0f} s)" if secs > PROBE_TIMEOUT_SECS else ""
    if code is None:
        return f"no answer ({body.get('reason')}){slow}"
    checks = body.get("checks", {})
    failing = [n for n, c in checks.items() if not c.get("ok") or c.get("degraded")]
    return f"{code} {body.get('status', '?')}" + (f" [{', '.join(failing)}]" if failing else "") + slow


def health_reasons(body: dict) -> list[str]:
    return [f"{name}: {check['reason']}" for name, check in body.get("checks", {}).items() if check.get("reason")]


def compress(labels: list[str]) -> str:
    """Consecutive repeats once: `200 ok → 503 unavailable [shards] → 200 ok`."""
    kept = [label for n, label in enumerate(labels) if n == 0 or labels[n - 1] != label]
    return " → ".join(kept) if kept else "not polled"


def cpu_secs(pid: int) -> float:
    """A process's user + system CPU time so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def listen_overflows() -> int:
    """The kernel's count of connections dropped because a listen queue was full (TcpExt ListenOverflows)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=True))["ListenOverflows"])
    return 0


def listen_backlog(port: int) -> str:
    """The accept-queue size a listening socket was given (`ss`'s Send-Q for a listener)."""
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout.split()
    return out[2] if len(out) > 2 else "?"
