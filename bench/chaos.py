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
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import requests
from sqlalchemy import text

from bench.chaos_clients import Watcher, connect_all, dark, held_totals, recovered_at
from bench.chaos_monitors import (
    Monitor,
    QueueWatch,
    compress,
    cpu_secs,
    health_label,
    health_reasons,
    listen_backlog,
    listen_overflows,
    timed_health,
)
from bench.chaos_report import Injected, Outcome, body, crowd_note, report_line, write_section
from bench.chaos_stack import ACCOUNTS, Stack
from bench.kite_front import renumbered_dump
from bench.machine import describe
from tests.support.processes import Process
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


# -- one event of the day --


class Day:
    """The stack, the watchers and the monitors; runs the events one after another."""

    def __init__(self, stack: Stack, watchers: list[Watcher], token_of: dict[str, int], args: argparse.Namespace):
        self.stack, self.watchers, self.token_of, self.args = stack, watchers, token_of, args
        # One poller per replica: a /health that hangs must not delay the other's samples.
        self.health = {name: Monitor(lambda name=name: timed_health(stack, name), 1.0) for name in stack.webs}
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
        healths = {n: [s for s in monitor.between(start, end) if isinstance(s, tuple)]
                   for n, monitor in self.health.items()}
        return Outcome(
            name=name, injected=injected, recovered=recovered, dark=left, silence=silence, lost=lost,
            conns=conns, refused=self._refused_total() - refused_before,
            violations=sum(1 for w in self.watchers for v in w.violations if start <= v[0] <= end),
            epoch_changes=sum(1 for w in self.watchers for at, _ in w.epoch_changes if start <= at <= end),
            epoch_allowed=epoch_allowed, errors=errors,
            reconnects=[back - gone for w in self.watchers for gone, back in zip(w.disconnects, w.connects[1:],
                                                                                 strict=False) if start <= gone <= end],
            health_during={n: compress([health_label(*sample) for sample in samples])
                           for n, samples in healths.items()},
            health_slowest={n: max([secs for _, _, secs in samples] or [0.0]) for n, samples in healths.items()},
            health_after=health_after,
            health_reasons=sorted({r for samples in healths.values() for _, body, _ in samples
                                   for r in health_reasons(body)}),
            queue=self.queue.between(start, end),
            unrestored=sum(1 for w in self.watchers if _unrestored(w, start, end)),
        )


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
    overflows = listen_overflows()
    backlog = listen_backlog(day.stack.webs["web1"])
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
    dropped = listen_overflows() - overflows
    return Injected(fault_at, fault_at, [crowd_note(report), f"web1 listens with a backlog of {backlog}; the kernel "
                                         f"counted {dropped} listen-queue overflows meanwhile (machine-wide)"],
                    crowd=report)


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
    ends_at = fault_at + STALL_SECS  # the simulator's stall and the proxy's both end then
    day.stack.feed_proxy.silence_new()
    touched = await asyncio.to_thread(day.stack.sim_post, "stall", seconds=f"{ends_at - time.time():.3f}")
    day.stack.later(ends_at - time.time(), day.stack.feed_proxy.heal)
    stalled = touched["data"]["connections"]
    return Injected(fault_at, ends_at,
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
        for monitor in day.health.values():
            monitor.stop()
        day.sim.stop()
        day.queue.stop()
    return day


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
    command = "python -m bench.chaos " + " ".join(sys.argv[1:])
    report = body(day, machine, command, time.time() - started)
    print(report)
    print(f"\nThe processes' logs of this run: {workdir}")
    if args.write:
        write_section(report)


if __name__ == "__main__":
    main()
