"""A compressed trading day against the whole service, with a report: `make chaos`.

    .venv/bin/python -m bench.chaos [--clients 300] [--crowd 1000] [--write]

Starts the service as real processes (bench/chaos_stack.py: its own Redis server, the Kite
simulator over two accounts with small limits, a PostgreSQL database of its own with the
registry loaded, two shard workers, a jobs worker, beat, two gevent web replicas behind a
round-robin TCP balancer; one replica's Redis and the shards' Kite connections go through TCP
proxies this run controls). `--clients` watchers (bench/chaos_clients.py) connect through the
balancer, each subscribing to one instrument by name and three by token, and record every tick's
(epoch, seq), every error, notice and reconnect. Then the day's events, one after another, each
waiting until every client has ticks again before the next:

- 06:00 Kite expires every access token (`/_sim/expire`); once clients are told, an operator
  logs in again through the service's `/kite/callback/<api_key>`;
- 08:15 the registry reload (the beat job, sent as beat sends it) of a dump that renumbers
  instruments clients hold by name;
- 09:15 a crowd of `--crowd` new clients connects to one replica and subscribes within a second;
- a shard worker killed with SIGKILL (with its children);
- a web replica killed with SIGKILL: its clients reconnect through the balancer;
- Redis killed and started again empty;
- one replica's Redis connections black-holed (no FIN, no RST; new connections work);
- a 15 s feed stall: the simulator sends nothing on open connections and new ones hang.

Per event: seconds until every client had a tick ingested after the fault (after the repair,
for those the run repairs itself: the login, the stall's end) for every token it asked for;
the longest silence of any client's token; subscriptions lost (clients the server says hold
fewer tokens than they asked for); the simulator's most Kite connections per API key at once
and connections it refused over its limit; (epoch, seq) order per client and token (never
backwards, never the same twice except a new connection's snapshot; a new epoch only after the
Redis restart); the `error` codes and reasons clients saw; what /health said during and after.

Uses PostgreSQL database `ticker_chaos` (CHAOS_DATABASE_URL), recreated. Logs of every process
stay in the printed directory. `--write` puts the report into RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis as redis_lib
import requests
from sqlalchemy import text

from bench.chaos_clients import Watcher, connect_all, dark, held_totals, recovered_at
from bench.chaos_stack import ACCOUNTS, PER_CONNECTION, PER_KEY, TICK_RATE, Stack
from bench.kite_front import renumbered_dump
from bench.machine import describe
from tests.support.processes import Process
from ticker.bus import keys
from ticker.config import ROOT
from ticker.db import engine_for

DATABASE_URL = os.environ.get("CHAOS_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/ticker_chaos")
SECTION = "## The trading day"
NAMED, RENUMBERED, CROWD_NEW = 12, 3, 30  # instruments held by name, renumbered of them, new in the crowd
TOKENS_PER_CLIENT = 3  # by number, besides one by name
FLEET_SPREAD_SECS = 5.0  # the watchers connect over this long
CROWD_SPREAD_SECS = 1.0
CROWD_SETTLE_SECS = 30.0  # the crowd waits this long at most for a tick of each of its tokens
RECOVERY_TIMEOUT_SECS = 120.0  # after the repair: past this the event counts as not recovered
SETTLE_SECS = 3.0  # after recovery, before subscriptions are counted
HEALTH_TIMEOUT_SECS = 45.0  # after recovery, how long /health may take to answer 200 again
RESTART_HEALTH_TIMEOUT_SECS = 90.0  # a restarted replica answers /health 200 within this, or it is reported
TOLD_TIMEOUT_SECS = 30.0  # the token expiry: how long clients may take to hear of it
STALL_SECS = 15.0
POLL_SECS = 0.2
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # /proc's unit of CPU time


# -- what was watched besides the clients --


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


def health_label(code: int | None, body: dict) -> str:
    """`503 unavailable [shards]`: the status and the checks that failed (or are degraded)."""
    if code is None:
        return f"no answer ({body.get('reason')})"
    checks = body.get("checks", {})
    failing = [n for n, c in checks.items() if not c.get("ok") or c.get("degraded")]
    return f"{code} {body.get('status', '?')}" + (f" [{', '.join(failing)}]" if failing else "")


def health_reasons(body: dict) -> list[str]:
    return [f"{name}: {check['reason']}" for name, check in body.get("checks", {}).items() if check.get("reason")]


def compress(labels: list[str]) -> str:
    """Consecutive repeats once: `200 ok → 503 unavailable [shards] → 200 ok`."""
    kept = [label for n, label in enumerate(labels) if n == 0 or labels[n - 1] != label]
    return " → ".join(kept) if kept else "not polled"


# -- one event of the day --


@dataclass
class Injected:
    """What an event did: when its fault began, from when fresh ticks count as recovery (the
    repair: a login, the stall's end; the fault itself when the service must heal alone)."""

    fault_at: float
    heal_at: float
    notes: list[str] = field(default_factory=list)
    after: Callable[[], str] | None = None  # restores the stack for the next event (not measured): a note
    down: tuple[str, ...] = ()  # replicas the event killed: no /health expected of them
    crowd: dict | None = None


@dataclass
class Outcome:
    name: str
    injected: Injected
    recovered: float | None
    dark: int
    silence: float
    lost: int
    conns: dict[str, int]
    refused: int
    violations: int
    epoch_changes: int
    epoch_allowed: bool
    errors: Counter
    reconnects: list[float]  # seconds from each disconnect in the event to the next connect
    health_during: dict[str, str]
    health_after: dict[str, str]
    health_reasons: list[str]
    queue: Counter
    unrestored: int  # clients told a token was unavailable and never told it was restored


class Day:
    """The stack, the watchers and the monitors; runs the events one after another."""

    def __init__(self, stack: Stack, watchers: list[Watcher], token_of: dict[str, int], args: argparse.Namespace):
        self.stack, self.watchers, self.token_of, self.args = stack, watchers, token_of, args
        self.health = Monitor(lambda: {name: stack.health(name) for name in stack.webs}, 1.0)
        self.sim = Monitor(stack.sim_stats, 0.5)
        self.queue = QueueWatch(stack.redis_port)
        self.outcomes: list[Outcome] = []
        self.final_stats: dict = {}  # the simulator's, at the end of the day

    def mark(self, at: float) -> None:
        """Ticks ingested from `at` (epoch seconds) on count as recovery."""
        self._marked = True
        for watcher in self.watchers:
            watcher.mark_ms = at * 1000

    def expected(self, watcher: Watcher) -> set[int]:
        return {self.token_of[name] for name in watcher.names} | set(watcher.tokens)

    async def run(self, name: str, inject: Callable[[], Awaitable[Injected]], epoch_allowed: bool = False) -> None:
        print(f"--- {name}", flush=True)
        started = time.time()
        refused_before = self._refused_total()
        self._marked = False
        cpu_before = self._web_cpu()
        for watcher in self.watchers:
            watcher.begin(started, math.inf)
        injected = await inject()
        if not self._marked:
            self.mark(injected.heal_at)
        recovered = await self._until_recovered(injected.heal_at)
        silence = max(w.silence(self.expected(w), time.time()) for w in self.watchers)
        left = len(dark(self.watchers, self.expected))
        await asyncio.sleep(SETTLE_SECS)
        lost = await self._lost()
        health_after = await asyncio.to_thread(self._health_after, injected.down)
        end = time.time()
        injected.notes.append(self._cpu_note(cpu_before, self._web_cpu(), end - started))
        self.outcomes.append(self._outcome(name, injected, recovered, left, silence, lost, refused_before,
                                           epoch_allowed, health_after, end))
        print(report_line(self.outcomes[-1]), flush=True)
        if injected.after is not None:
            injected.notes.append(await asyncio.to_thread(injected.after))

    async def _until_recovered(self, heal_at: float) -> float | None:
        deadline = max(heal_at, time.time()) + RECOVERY_TIMEOUT_SECS
        while time.time() < deadline:
            done = recovered_at(self.watchers, self.expected)
            if done is not None:
                return done
            await asyncio.sleep(POLL_SECS)
        return None

    async def _lost(self) -> int:
        totals = await held_totals(self.watchers)
        return sum(total is None or total < len(self.expected(w)) for w, total in zip(self.watchers, totals,
                                                                                   strict=True))

    def _health_after(self, down: tuple[str, ...]) -> dict[str, str]:
        """Each replica's /health once recovered, waiting (a bounded while) for 200."""
        names = [name for name in self.stack.webs if name not in down]
        deadline = time.time() + HEALTH_TIMEOUT_SECS
        answers = {name: self.stack.health(name) for name in names}
        since = time.time()
        while time.time() < deadline and any(code != 200 for code, _ in answers.values()):
            time.sleep(1)
            answers = {name: self.stack.health(name) for name in names}
        waited = time.time() - since
        labels = {name: health_label(*answer) + (f" after {waited:.0f} s more" if waited >= 1 else "")
                  for name, answer in answers.items()}
        return {name: labels.get(name, "killed") for name in self.stack.webs}

    def _web_cpu(self) -> dict[str, tuple[int, float]]:
        """name -> (pid, CPU-seconds so far) of each running web replica."""
        return {name: (process.pid, cpu_secs(process.pid)) for name, process in self.stack.web_processes.items()
                if process.alive()}

    @staticmethod
    def _cpu_note(before: dict, after: dict, wall: float) -> str:
        used = [f"{name} {after[name][1] - cpu:.1f}" for name, (pid, cpu) in before.items()
                if name in after and after[name][0] == pid]
        return f"web replicas' CPU-s over the event's {wall:.0f} s: {', '.join(used) or 'none measured'}"

    def _refused_total(self) -> int:
        return int(self.stack.sim_stats()["totals"].get("connections_refused_over_limit", 0))

    def _outcome(self, name, injected, recovered, left, silence, lost, refused_before, epoch_allowed,
                 health_after, end) -> Outcome:
        start = injected.fault_at
        errors = Counter(_code(code, reason) for w in self.watchers for at, code, reason in w.errors
                         if start <= at <= end)
        errors.update(f"refused:{code}" for w in self.watchers for at, code in w.refusals if start <= at <= end)
        errors.update(f"rejected:{code}" for w in self.watchers for at, code in w.rejected if start <= at <= end)
        samples = [s for s in self.sim.between(start, end) if isinstance(s, dict)]
        conns = {key: max([s["connections_per_key"].get(key, {}).get("now", 0) for s in samples] or [0])
                 for key in ACCOUNTS}
        healths = [s for s in self.health.between(start, end) if isinstance(s, dict)]
        return Outcome(
            name=name, injected=injected, recovered=recovered, dark=left, silence=silence, lost=lost,
            conns=conns, refused=self._refused_total() - refused_before,
            violations=sum(1 for w in self.watchers for v in w.violations if start <= v[0] <= end),
            epoch_changes=sum(1 for w in self.watchers for at, _ in w.epoch_changes if start <= at <= end),
            epoch_allowed=epoch_allowed, errors=errors,
            reconnects=[back - gone for w in self.watchers for gone, back in zip(w.disconnects, w.connects[1:],
                                                                                 strict=False) if start <= gone <= end],
            health_during={n: compress([health_label(*s[n]) for s in healths]) for n in self.stack.webs},
            health_after=health_after,
            health_reasons=sorted({r for s in healths for n in s for r in health_reasons(s[n][1])}),
            queue=self.queue.between(start, end),
            unrestored=sum(1 for w in self.watchers if _unrestored(w, start, end)),
        )


def cpu_secs(pid: int) -> float:
    """A process's user + system CPU time so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _code(code: str, reason: str | None) -> str:
    return f"{code}/{reason}" if reason else code


def _unrestored(watcher: Watcher, start: float, end: float) -> bool:
    """Told `upstream_unavailable` in the window, and no `upstream_restored` after the last such notice."""
    told = [at for at, code, _ in watcher.errors if code == "upstream_unavailable" and start <= at <= end]
    return bool(told) and not any(at >= max(told) for at in watcher.restored)


# -- the events --


async def start_of_day(day: Day) -> Injected:
    """The watchers connect through the balancer and subscribe."""
    now = time.time()
    day.mark(now)
    await connect_all(day.watchers, FLEET_SPREAD_SECS)
    connected = sum(w.sio.connected for w in day.watchers)
    return Injected(now, now, [f"{connected} of {len(day.watchers)} clients connected"])


async def token_expiry(day: Day) -> Injected:
    """06:00: Kite expires every access token; once clients were told, an operator logs in."""
    fault_at = time.time()
    for api_key in ACCOUNTS:
        await asyncio.to_thread(day.stack.sim_post, "expire", api_key=api_key)
    told = await _until(lambda: all(_told(w, fault_at) for w in day.watchers), TOLD_TIMEOUT_SECS)
    untold = sum(not _told(w, fault_at) for w in day.watchers)
    notes = [f"every client told `upstream_unavailable`/`token_expired` within {told - fault_at:.1f} s" if told
             else f"{untold} clients not told `upstream_unavailable`/`token_expired` within {TOLD_TIMEOUT_SECS:.0f} s"]
    heal_at = time.time()
    day.mark(heal_at)
    logins = [await asyncio.to_thread(day.stack.login, api_key) for api_key in ACCOUNTS]
    notes.append("logins through /kite/callback: " + ", ".join(str(status) for status, _ in logins))
    notes += [f"login refused: {body}" for status, body in logins if status != 200]
    return Injected(fault_at, heal_at, notes)


def _told(watcher: Watcher, since: float) -> bool:
    return any(at >= since and code == "upstream_unavailable" and reason == "token_expired"
               for at, code, reason in watcher.errors)


async def registry_reload(day: Day, moves: dict[str, str]) -> Injected:
    """08:15: beat's reload job, of a dump that renumbers instruments clients hold by name."""
    day.stack.front.dump, renumbered = renumbered_dump(day.stack.front.dump.decode(), moves)
    followers = [w for w in day.watchers if set(w.names) & set(moves)]
    for name in moves:
        day.token_of[name] = renumbered[day.token_of[name]]
    fault_at = time.time()
    day.mark(fault_at)
    await asyncio.to_thread(day.stack.reload_registry)
    await _until(lambda: all(day.token_of[w.names[0]] in w.held for w in followers), RECOVERY_TIMEOUT_SECS)
    followed = sum(day.token_of[w.names[0]] in w.held for w in followers)
    return Injected(fault_at, fault_at, [f"{len(moves)} instruments renumbered; {followed} of {len(followers)} "
                                         f"clients holding them by name moved to the new token"])


async def crowd(day: Day, tokens: list[list[int]]) -> Injected:
    """09:15: new clients connect to one replica and subscribe, all within a second."""
    workdir = day.stack.workdir
    spec = {"url": f"http://127.0.0.1:{day.stack.webs['web1']}", "spread_secs": CROWD_SPREAD_SECS,
            "settle_secs": CROWD_SETTLE_SECS,
            "clients": [{"jwt": jwt, "tokens": t} for jwt, t in zip(day.stack.jwts("crowd", len(tokens)), tokens,
                                                                     strict=True)]}
    (workdir / "crowd.json").write_text(json.dumps(spec))
    fault_at = time.time()
    day.mark(fault_at)
    process = Process("crowd", [sys.executable, "-m", "bench.chaos_clients", "crowd", str(workdir / "crowd.json"),
                                str(workdir / "crowd-report.json")], day.stack.env, workdir)
    try:
        code = await asyncio.to_thread(process.proc.wait, CROWD_SETTLE_SECS + 240)
    except subprocess.TimeoutExpired:
        code = "timed out"
    process.stop()
    report = json.loads((workdir / "crowd-report.json").read_text()) if code == 0 else {"failed": code}
    return Injected(fault_at, fault_at, [crowd_note(report)], crowd=report)


def crowd_note(report: dict) -> str:
    if "failed" in report:
        return f"the crowd process failed ({report['failed']}): see crowd.log"
    spread = report["connect_secs"]
    done = report["all_receiving_secs"]
    cpu = f" (the crowd's client process used {report['cpu_secs']:.1f} CPU-s)" if "cpu_secs" in report else ""
    return (f"crowd: {report['connected']} of {report['clients']} connected (last {spread['last'] or 0:.1f} s after "
            f"the first began), {report['subscribed']} subscribed, {report['receiving_all']} received every token "
            + (f"(all within {done:.1f} s, median {report['median_receiving_secs']:.1f} s)" if done is not None
               else f"within {CROWD_SETTLE_SECS:.0f} s") + f"; errors {report['errors'] or 'none'}, "
            f"refused {report['refused'] or 'none'}, rejected {report['rejected'] or 'none'}, "
            f"(epoch, seq) violations {report['violations']}" + _own(report.get("own_secs")) + cpu)


def _own(own: dict | None) -> str:
    if not own:
        return ""
    return (f"; from each client's own connect to a tick of each token: median {own['median']:.1f} s, "
            f"p99 {own['p99']:.1f} s, max {own['max']:.1f} s")


async def shard_worker_kill(day: Day) -> Injected:
    """A shard worker and its children killed with SIGKILL; a replacement starts afterwards."""
    victim, slots = await asyncio.to_thread(day.stack.busiest_shard_worker)
    fault_at = time.time()
    await asyncio.to_thread(day.stack.kill_shard_worker, victim)
    def replace() -> str:
        return f"{day.stack.start_shard_worker().name} started in its place after the event"

    return Injected(fault_at, fault_at, [f"killed {victim.name} streaming slots {', '.join(slots) or 'none'}"],
                    after=replace)


async def web_replica_kill(day: Day) -> Injected:
    """web1 killed with SIGKILL: its clients reconnect through the balancer; it restarts afterwards."""
    on_it = await asyncio.to_thread(_clients_of, day.stack, "web1")
    fault_at = time.time()
    await asyncio.to_thread(day.stack.kill_web, "web1")

    def restart() -> str:
        begun = time.time()
        day.stack.start_web("web1")
        try:
            day.stack.wait_healthy("web1", RESTART_HEALTH_TIMEOUT_SECS)
        except AssertionError:
            return f"web1 restarted after the event: **no /health 200 within {RESTART_HEALTH_TIMEOUT_SECS:.0f} s**"
        return f"web1 restarted after the event: /health 200 {time.time() - begun:.1f} s after its start"

    return Injected(fault_at, fault_at, [f"killed web1 holding {on_it} clients"], after=restart, down=("web1",))


def _clients_of(stack: Stack, name: str) -> str:
    """The replica's `ticker_clients_connected`, from its /metrics."""
    try:
        metrics = requests.get(f"http://127.0.0.1:{stack.webs[name]}/metrics", params={"scope": "replica"}, timeout=5)
    except requests.RequestException:
        return "?"
    found = re.search(r"^ticker_clients_connected (\S+)$", metrics.text, re.M)
    return str(int(float(found.group(1)))) if found else "?"


async def redis_restart(day: Day) -> Injected:
    """Redis killed with SIGKILL and started again at once, empty."""
    fault_at = time.time()
    await asyncio.to_thread(day.stack.restart_redis_empty)
    return Injected(fault_at, fault_at, [f"Redis back, empty, {time.time() - fault_at:.1f} s after the kill"])


async def pubsub_blackhole(day: Day) -> Injected:
    """Every open Redis connection of web2 silently dropped; new connections work."""
    fault_at = time.time()
    silenced = day.stack.redis_proxy.blackhole()
    return Injected(fault_at, fault_at, [f"{silenced} Redis connections of web2 black-holed"])


async def feed_stall(day: Day) -> Injected:
    """The simulator sends nothing on open connections and new connections hang, for 15 s."""
    fault_at = time.time()
    day.stack.feed_proxy.silence_new()
    touched = await asyncio.to_thread(day.stack.sim_post, "stall", seconds=str(STALL_SECS))
    day.stack.later(STALL_SECS, day.stack.feed_proxy.heal)
    stalled = touched["data"]["connections"]
    return Injected(fault_at, fault_at + STALL_SECS,
                    [f"{stalled} Kite connections stalled; new ones hang for {STALL_SECS:.0f} s"])


async def _until(condition: Callable[[], bool], timeout: float) -> float | None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return time.time()
        await asyncio.sleep(POLL_SECS)
    return None


# -- the plan: which client holds what --


@dataclass
class Plan:
    named: list[str]
    numbered: list[int]
    crowd_new: list[int]
    moves: dict[str, str]  # renumbered name -> the name whose token it takes
    token_of: dict[str, int]


def plan(database_url: str) -> Plan:
    """NSE equities of the registry: some held by name (a few to be renumbered into the tokens
    of instruments nobody holds), others by token, and some only the crowd asks for."""
    with engine_for(database_url).connect() as connection:
        rows = connection.execute(text("SELECT instrument_token, exchange || ':' || tradingsymbol FROM instruments "
                                       "WHERE segment = 'NSE' ORDER BY instrument_token")).all()
    names = [name for _, name in rows]
    numbered = [token for token, _ in rows[NAMED:NAMED + 9 * NAMED]]
    crowd_new = [token for token, _ in rows[10 * NAMED:10 * NAMED + CROWD_NEW]]
    moves = dict(zip(names[:RENUMBERED], names[-RENUMBERED:], strict=True))
    return Plan(names[:NAMED], numbered, crowd_new, moves, {name: token for token, name in rows})


def watchers(stack: Stack, the_plan: Plan, count: int) -> list[Watcher]:
    jwts = stack.jwts("watcher", count)
    numbered = the_plan.numbered
    return [Watcher(n, stack.url, jwts[n], [the_plan.named[n % len(the_plan.named)]],
                    [numbered[(TOKENS_PER_CLIENT * n + k) % len(numbered)] for k in range(TOKENS_PER_CLIENT)])
            for n in range(count)]


def crowd_tokens(the_plan: Plan, count: int) -> list[list[int]]:
    return [[the_plan.numbered[n % len(the_plan.numbered)], the_plan.crowd_new[n % len(the_plan.crowd_new)]]
            for n in range(count)]


async def trading_day(stack: Stack, args: argparse.Namespace) -> Day:
    the_plan = plan(DATABASE_URL)
    day = Day(stack, watchers(stack, the_plan, args.clients), the_plan.token_of, args)
    try:
        await day.run(f"05:55 {args.clients} clients connect and subscribe", lambda: start_of_day(day))
        await day.run("06:00 Kite token expiry, then a login", lambda: token_expiry(day))
        await day.run("08:15 registry reload, instruments renumbered", lambda: registry_reload(day, the_plan.moves))
        await day.run(f"09:15 a crowd of {args.crowd} connects", lambda: crowd(day, crowd_tokens(the_plan, args.crowd)))
        await day.run("shard worker kill -9", lambda: shard_worker_kill(day))
        await day.run("web replica kill -9", lambda: web_replica_kill(day))
        await day.run("Redis restarted empty", lambda: redis_restart(day), epoch_allowed=True)
        await day.run("pub/sub black hole on web2", lambda: pubsub_blackhole(day))
        await day.run(f"{STALL_SECS:.0f} s feed stall", lambda: feed_stall(day))
    finally:
        day.final_stats = await asyncio.to_thread(day.stack.sim_stats)
        await asyncio.gather(*(w.stop() for w in day.watchers), return_exceptions=True)
        day.health.stop()
        day.sim.stop()
        day.queue.stop()
    return day


# -- the report --


def seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} s"


def recovery_cell(outcome: Outcome) -> str:
    injected = outcome.injected
    if outcome.recovered is None:
        return f"**not within {RECOVERY_TIMEOUT_SECS:.0f} s** ({outcome.dark} client tokens dark)"
    cell = seconds(outcome.recovered - injected.fault_at)
    if injected.heal_at > injected.fault_at + 0.5:
        cell += f" ({seconds(outcome.recovered - injected.heal_at)} after the repair)"
    return cell


def order_cell(outcome: Outcome) -> str:
    cell = "held" if not outcome.violations else f"**{outcome.violations} violations**"
    if outcome.epoch_changes:
        what = "new epoch" if outcome.epoch_allowed else "**new epoch, unexpected**"
        cell += f"; {what} ({outcome.epoch_changes} client tokens)"
    return cell


def errors_cell(errors: Counter) -> str:
    return ", ".join(f"`{code}` ×{count}" for code, count in sorted(errors.items())) or "none"


def report_line(outcome: Outcome) -> str:
    return (f"{outcome.name}: ticks again {recovery_cell(outcome)}; longest silence {seconds(outcome.silence)}; "
            f"lost {outcome.lost}; connections per key {outcome.conns} (refused {outcome.refused}); "
            f"order {order_cell(outcome)}; errors {errors_cell(outcome.errors)}; {reconnects(outcome.reconnects)}; "
            f"health {outcome.health_during} after {outcome.health_after}; " + "; ".join(outcome.injected.notes))


def reconnects(times: list[float]) -> str:
    if not times:
        return "no client reconnected"
    return (f"{len(times)} clients reconnected, median {statistics.median(times):.1f} s and at most "
            f"{max(times):.1f} s after their connection dropped")


def table(outcomes: list[Outcome]) -> str:
    lines = ["| event | every client ticking again | longest silence | subscriptions lost | Kite connections "
             f"per key, most at once (limit {PER_KEY}) | refused over the limit | (epoch, seq) order | errors "
             "clients saw | /health during (web1; web2) | /health after |",
             "| --- | --- | ---: | ---: | --- | ---: | --- | --- | --- | --- |"]
    for o in outcomes:
        conns = ", ".join(f"{key} {count}" for key, count in o.conns.items())
        during = "; ".join(o.health_during.values())
        after = "; ".join(o.health_after.values())
        lines.append(f"| {o.name} | {recovery_cell(o)} | {seconds(o.silence)} | {o.lost} | {conns} | {o.refused} | "
                     f"{order_cell(o)} | {errors_cell(o.errors)} | {during} | {after} |")
    return "\n".join(lines)


def notes(outcomes: list[Outcome]) -> str:
    lines = []
    for o in outcomes:
        queue = ", ".join(f"{method} ×{count}" for method, count in o.queue.most_common()) or "none"
        began = time.strftime("%H:%M:%S", time.gmtime(o.injected.fault_at))
        told = sum(count for code, count in o.errors.items() if code.startswith("upstream_unavailable"))
        restored = (f"; {o.unrestored} clients told `upstream_unavailable` never heard `upstream_restored`"
                    if told else "")
        lines.append(f"- **{o.name}** (began {began} UTC): " + "; ".join(o.injected.notes) + restored
                     + f"; {reconnects(o.reconnects)}; Socket.IO message queue messages: {queue}.")
        lines += [f"  - /health said: {reason}" for reason in o.health_reasons[:8]]
    return "\n".join(lines)


def body(day: Day, machine: str, command: str, took: float, logs: Path) -> str:
    args = day.args
    stats = day.final_stats
    highs = ", ".join(f"{key} {seen.get('max', 0)}" for key, seen in sorted(stats["connections_per_key"].items()))
    totals = (f"{sum(w.ticks for w in day.watchers):,} ticks checked, {sum(w.snapshot_repeats for w in day.watchers)} "
              "snapshots that repeated the tick last seen on a new connection; the simulator's most connections per "
              f"key at once over the day: {highs}, refused over its limit: "
              f"{stats['totals'].get('connections_refused_over_limit', 0)}")
    return "\n".join([
        f"`.venv/bin/{command.strip()}` (`make chaos`); {machine}, {os.getloadavg()[0]:.2f} at the end; the whole "
        f"run took {took / 60:.1f} min.",
        "",
        f"The service as real processes (bench/chaos_stack.py): a Redis server of its own, the simulator at "
        f"{TICK_RATE:g} ticks/s per instrument enforcing {PER_KEY} connections per API key and {PER_CONNECTION} "
        f"instruments per connection over {len(ACCOUNTS)} accounts, two shard workers, a jobs worker, beat, two gevent "
        "web replicas behind a round-robin TCP balancer (web2's Redis through a proxy the run controls, the "
        f"shards' Kite connections through another). {args.clients} clients (python-socketio, asyncio) connect "
        "through the balancer, each holding one instrument by name and three by token and resubscribing after any "
        "reconnect; the crowd connects to web1 directly. Nothing is retried silently: every error a client saw is "
        "counted. *Every client ticking again* is when the last client had a tick ingested after the fault (after "
        "the repair, where the run repairs: the login, the stall's end) for every token it asked for; *subscriptions "
        "lost* are clients that, asked after recovery, hold fewer tokens than they asked for.",
        "",
        table(day.outcomes),
        "",
        notes(day.outcomes),
        "",
        f"{totals}. The processes' logs of this run: `{logs}`.",
    ])


def write_section(text_body: str) -> None:
    path = ROOT / "RELIABILITY.md"
    current = path.read_text() if path.exists() else "# Reliability\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    section = f"{SECTION}\n\n{text_body.strip()}\n\n"
    if pattern.search(current):
        current = pattern.sub(lambda _: section, current)
    else:
        current = current.rstrip() + "\n\n" + section
    path.write_text(current.rstrip() + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=300, help="clients watching all day")
    parser.add_argument("--crowd", type=int, default=1000, help="clients of the 09:15 crowd")
    parser.add_argument("--write", action="store_true", help="write the report into RELIABILITY.md")
    args = parser.parse_args()
    machine = describe()
    print(machine, flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="ticker-chaos-"))
    print(f"logs: {workdir}", flush=True)
    started = time.time()
    stack = Stack(workdir, DATABASE_URL)
    try:
        stack.start()
        day = asyncio.run(trading_day(stack, args))
    finally:
        stack.stop()
    report = body(day, machine, "python -m bench.chaos " + " ".join(sys.argv[1:]), time.time() - started, workdir)
    print(report)
    if args.write:
        write_section(report)


if __name__ == "__main__":
    main()
