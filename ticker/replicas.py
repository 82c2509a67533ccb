"""Several web replicas on one host, one per core, behind nginx with sticky sessions.

    python -m ticker.replicas             run them until SIGTERM or SIGINT (the Procfile's `replicas`)
    python -m ticker.replicas upstream    print nginx's `upstream ticker_web` block for them
    python -m ticker.replicas check       exit 0 when every replica answers /health/live

A web replica is one process on one core (gevent serves its clients from one thread), so a host
with 16 cores runs 16 of them. `run` starts `WEB_CONCURRENCY` replicas (default: one per core
this process may run on, `os.sched_getaffinity`), each `python wsgi.py` as a process of its own
with `PORT` = `PORT` + its index, pinned to a core of its own (`WEB_PIN_CORES`), and starts
again, after a backoff, any replica that exits while the others keep serving. Each replica is a
whole replica (its own id, tick listener, demand and clients); they share nothing but Redis,
where Flask-SocketIO's message queue and the demand keys already join replicas on many hosts.

Why not gunicorn's `-w N`: its workers share one listening socket, so the kernel hands each new
TCP connection to any of them, and a Socket.IO client's polling requests (separate connections)
would reach replicas that do not hold its session (Flask-SocketIO's deployment notes say the
same). Each replica listens on a port of its own instead, and nginx pins each client address to
one of them (`ip_hash`, deploy/nginx.conf). With `WEB_UPSTREAM_FILE` set, `run` writes the
`upstream` block naming the replicas (as `WEB_UPSTREAM_HOST`:port) there before starting them,
for nginx to include.

A replica that dies is logged with its exit code and started again; its clients reconnect
through nginx to a live one meanwhile. Each start shows on the replica's own /metrics as a new
`process_start_time_seconds`. If this supervisor itself dies, the kernel sends each replica
SIGTERM (`PR_SET_PDEATHSIG`), so none outlives it unsupervised. Linux only for pinning and that
signal; elsewhere the replicas run unpinned.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ticker.config import ROOT, Config
from ticker.logs import configure_logging

log = logging.getLogger("ticker.replicas")

STOP_WAIT_SECS = 10.0  # SIGTERM to the replicas, then SIGKILL to those still running after this
RESTART_DELAY_SECS = 1.0  # the first restart's wait; doubled per failure in a row
RESTART_DELAY_MAX_SECS = 30.0
HEALTHY_RUN_SECS = 60.0  # a replica that ran this long had no failure in a row: the backoff resets
POLL_SECS = 0.2  # how often the supervisor looks for replicas that exited
PR_SET_PDEATHSIG = 1  # prctl(2)
MAX_REPLICAS_PER_CORE = 4  # beyond it replicas only take turns on the cores: surely a typo
LOOPBACK = "127.0.0.1"  # where replicas listen unless WEB_HOST is set: behind a proxy on this host


@dataclass(frozen=True)
class ReplicaSlot:
    """Where replica `index` runs: its `port`, and the `core` it is pinned to (None: unpinned)."""

    index: int
    port: int
    core: int | None


def plan(concurrency: int, base_port: int, cores: list[int], pin: bool) -> list[ReplicaSlot]:
    """The replicas to run: `concurrency` of them (0: one per core of `cores`, the CPUs this
    process may use), on consecutive ports from `base_port`, replica i on `cores[i % len]`
    when `pin` (more replicas than cores share cores round robin). Raises ValueError for a
    negative concurrency or a port past 65535."""
    if concurrency < 0:
        raise ValueError(f"WEB_CONCURRENCY must be 0 (one per core) or more, not {concurrency}")
    if concurrency > MAX_REPLICAS_PER_CORE * max(1, len(cores)):
        raise ValueError(f"WEB_CONCURRENCY={concurrency} is more than {MAX_REPLICAS_PER_CORE} replicas per core "
                         f"of the {len(cores)} this host gives: a replica is one core's worth (0: one per core)")
    count = concurrency or max(1, len(cores))
    if base_port + count - 1 > 65535:
        raise ValueError(f"{count} replicas from port {base_port} go past port 65535")
    ordered = sorted(cores)
    return [ReplicaSlot(i, base_port + i, ordered[i % len(ordered)] if pin and ordered else None)
            for i in range(count)]


def nginx_upstream(slots: list[ReplicaSlot], host: str) -> str:
    """nginx's `upstream ticker_web` block for `slots` at `host`: `ip_hash`, since a Socket.IO
    client polling over HTTP sends each request on a connection of its own and every one must
    reach the replica that holds its session. A replica that refuses connections is skipped
    for `fail_timeout` after `max_fails` failures (its clients reconnect to the others)."""
    servers = "".join(f"    server {host}:{slot.port} max_fails=3 fail_timeout=10s;\n" for slot in slots)
    return ("# Written by `python -m ticker.replicas`: one server per web replica of this host.\n"
            f"upstream ticker_web {{\n    ip_hash;\n{servers}}}\n")


def restart_delay(failures_in_a_row: int) -> float:
    """Seconds to wait before starting a replica that exited after `failures_in_a_row` quick
    exits (1 for the first): 1, 2, 4, ... up to 30, so a replica that cannot start (a port
    taken, a bad setting) is retried without spinning."""
    return min(RESTART_DELAY_MAX_SECS, RESTART_DELAY_SECS * 2 ** max(0, failures_in_a_row - 1))


def usable_cores() -> list[int]:
    """The CPUs this process may run on (a container's cpuset, `taskset`), else all of them."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def configured_slots(config: type[Config] = Config) -> list[ReplicaSlot]:
    """`plan` with the settings of `config` (WEB_CONCURRENCY, PORT, WEB_PIN_CORES)."""
    return plan(config.WEB_CONCURRENCY, config.WEB_PORT, usable_cores(), config.WEB_PIN_CORES)


def _prepare_child(core: int | None) -> None:
    """Runs in the replica's process between fork and exec (the supervisor has one thread)."""
    if sys.platform.startswith("linux"):
        # The kernel SIGTERMs the replica when the supervisor dies, even by SIGKILL.
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if core is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})  # threads the replica starts later inherit it


class RunningReplica:
    """One replica process and its restart bookkeeping."""

    def __init__(self, slot: ReplicaSlot):
        self.slot = slot
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        self.failures_in_a_row = 0
        self.restart_at: float | None = None  # monotonic time of the next start, while it is down
        self.starts = 0

    def start(self, argv: list[str]) -> None:
        # Behind a proxy on this host: loopback unless WEB_HOST says otherwise (compose sets
        # 0.0.0.0, its proxy being another container). Given PORT, a lone replica would take
        # every interface (a platform's router needs that), and clients could go round nginx.
        env = {**os.environ, "PORT": str(self.slot.port), "WEB_HOST": os.environ.get("WEB_HOST") or LOOPBACK}
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, preexec_fn=lambda: _prepare_child(self.slot.core))
        self.started_at, self.restart_at = time.monotonic(), None
        self.starts += 1
        core = "unpinned" if self.slot.core is None else f"core {self.slot.core}"
        log.info("replica %d started: pid %d, %s:%d, %s%s", self.slot.index, self.proc.pid, env["WEB_HOST"],
                 self.slot.port, core, f" (start {self.starts})" if self.starts > 1 else "")

    def exited(self) -> int | None:
        """The exit code when the process has just been found to have exited (once), else None."""
        if self.proc is None or self.restart_at is not None:
            return None
        return self.proc.poll()

    def schedule_restart(self, code: int) -> float:
        ran = time.monotonic() - self.started_at
        self.failures_in_a_row = 1 if ran >= HEALTHY_RUN_SECS else self.failures_in_a_row + 1
        delay = restart_delay(self.failures_in_a_row)
        self.restart_at = time.monotonic() + delay
        how = f"signal {-code}" if code < 0 else f"code {code}"
        log.error("replica %d (pid %d, port %d) exited with %s after %.1f s; starting it again in %.0f s",
                  self.slot.index, self.proc.pid, self.slot.port, how, ran, delay)
        return delay


class Supervisor:
    """Runs `slots` as `argv` processes until asked to stop; see the module docstring."""

    def __init__(self, slots: list[ReplicaSlot], argv: list[str] | None = None):
        self.replicas = [RunningReplica(slot) for slot in slots]
        self.argv = argv or [sys.executable, str(ROOT / "wsgi.py")]
        self.stopping = False

    def request_stop(self, signum: int, _frame: object = None) -> None:
        if not self.stopping:
            log.info("%s received: stopping %d replicas", signal.Signals(signum).name, len(self.replicas))
        self.stopping = True

    def run(self) -> int:
        """Start every replica, keep them running, stop them on SIGTERM/SIGINT; returns 0."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.request_stop)
        for replica in self.replicas:
            replica.start(self.argv)
        while not self.stopping:
            self.tend(time.monotonic())
            time.sleep(POLL_SECS)
        self.stop_all()
        return 0

    def tend(self, now: float) -> None:
        """One pass: note replicas that exited, start those whose backoff is over."""
        for replica in self.replicas:
            code = replica.exited()
            if code is not None:
                replica.schedule_restart(code)
            elif replica.restart_at is not None and now >= replica.restart_at:
                replica.start(self.argv)

    def stop_all(self) -> None:
        live = [r.proc for r in self.replicas if r.proc is not None and r.proc.poll() is None]
        for proc in live:
            proc.terminate()
        deadline = time.monotonic() + STOP_WAIT_SECS
        for proc in live:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("replica pid %d still running %.0f s after SIGTERM: killing it", proc.pid, STOP_WAIT_SECS)
                proc.kill()
                proc.wait()
        log.info("stopped")


def write_upstream(path: str, slots: list[ReplicaSlot], host: str) -> None:
    """Write `nginx_upstream` to `path` whole (a rename), so nginx never reads half of it."""
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(nginx_upstream(slots, host))
    partial.replace(target)


def check(slots: list[ReplicaSlot], timeout: float = 3.0) -> list[str]:
    """The replicas that do not answer GET /health/live on 127.0.0.1, as `port: reason` lines."""
    failures = []
    for slot in slots:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{slot.port}/health/live", timeout=timeout):
                pass
        except OSError as exc:  # URLError, HTTPError, timeouts and refusals are all OSErrors
            failures.append(f"{slot.port}: {exc}")
    return failures


def main(args: list[str]) -> int:
    configure_logging(Config.LOG_LEVEL)
    command = args[0] if args else "run"
    if command in ("-h", "--help", "help"):
        print(__doc__)
        return 0
    try:
        slots = configured_slots()
    except ValueError as exc:  # a setting that cannot work: say which, without a traceback
        print(f"ticker.replicas: {exc}", file=sys.stderr)
        return 2
    if command == "upstream":
        print(nginx_upstream(slots, Config.WEB_UPSTREAM_HOST), end="")
        return 0
    if command == "check":
        failures = check(slots)
        for failure in failures:
            print(failure, file=sys.stderr)
        return 1 if failures else 0
    if command != "run":
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    if Config.WEB_UPSTREAM_FILE:
        write_upstream(Config.WEB_UPSTREAM_FILE, slots, Config.WEB_UPSTREAM_HOST)
    return Supervisor(slots).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
