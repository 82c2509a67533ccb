"""The trading day's report: one table row per event, notes under it, written into
RELIABILITY.md's "The trading day" section by `--write`."""

from __future__ import annotations

import os
import re
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bench.chaos_stack import ACCOUNTS, PER_CONNECTION, PER_KEY, TICK_RATE
from ticker.config import ROOT

if TYPE_CHECKING:
    from bench.chaos import Day

SECTION = "## The trading day"


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
    health_slowest: dict[str, float]  # the longest a /health request took, per replica
    queue: Counter
    unrestored: int  # clients told a token was unavailable and never told it was restored


def seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} s"


def recovery_cell(outcome: Outcome) -> str:
    injected = outcome.injected
    if outcome.recovered is None:
        return f"**not recovered** ({outcome.dark} client tokens still dark when the run moved on)"
    cell = seconds(outcome.recovered - injected.fault_at)
    if injected.heal_at > injected.fault_at + 0.5:
        cell += f" ({seconds(outcome.recovered - injected.heal_at)} after the repair)"
    if injected.crowd:
        done = injected.crowd.get("all_receiving_secs")
        cell += f"; the crowd: {'**not all**' if done is None else f'all within {seconds(done)}'}"
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
                     + f"; {reconnects(o.reconnects)}; Socket.IO message queue messages: {queue}; slowest /health: "
                     + ", ".join(f"{name} {secs:.1f} s" for name, secs in o.health_slowest.items()) + ".")
        lines += [f"  - /health said: {reason}" for reason in o.health_reasons[:8]]
    return "\n".join(lines)


def body(day: Day, machine: str, command: str, took: float) -> str:
    """The section's text: the command, the machine, the method, the table and the notes."""
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
        "reconnect; the crowd connects to web1 directly. Nothing is retried silently: a subscribe answered with a "
        "retry-later code (`server_busy`, `bus_unavailable`, `database_unavailable`, `rate_limited`) is tried again "
        "with backoff, as the code asks, and every error a client saw is counted. *Every client ticking again* "
        "is when the last client had a tick ingested after the fault (after "
        "the repair, where the run repairs: the login, the stall's end) for every token it asked for; *subscriptions "
        "lost* are clients that, asked after recovery, hold fewer tokens than they asked for.",
        "",
        table(day.outcomes),
        "",
        notes(day.outcomes),
        "",
        f"{totals}.",
    ])


def write_section(text_body: str) -> None:
    """Replace RELIABILITY.md's "The trading day" section (the rest of the file stays as it is)."""
    path = ROOT / "RELIABILITY.md"
    current = path.read_text() if path.exists() else "# Reliability\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    section = f"{SECTION}\n\n{text_body.strip()}\n\n"
    if pattern.search(current):
        current = pattern.sub(lambda _: section, current)
    else:
        current = current.rstrip() + "\n\n" + section
    path.write_text(current.rstrip() + "\n")


def crowd_note(report: dict) -> str:
    if "failed" in report:
        return f"the crowd process failed ({report['failed']}): see crowd.log"
    spread = report["connect_secs"]
    done = report["all_receiving_secs"]
    cpu = f" (the crowd's client process used {report['cpu_secs']:.1f} CPU-s)" if "cpu_secs" in report else ""
    return (f"crowd: {report['connected']} of {report['clients']} connected (last {spread['last'] or 0:.1f} s after "
            f"the first began), {report['subscribed']} subscribed, {report['receiving_all']} received every token "
            + (f"(all within {done:.1f} s, median {report['median_receiving_secs']:.1f} s)" if done is not None
               else f"within {report['settle_secs']:.0f} s") + f"; errors {report['errors'] or 'none'}, "
            f"refused {report['refused'] or 'none'}, rejected {report['rejected'] or 'none'}, "
            f"(epoch, seq) violations {report['violations']}" + _own(report.get("own_secs")) + cpu)


def _own(own: dict | None) -> str:
    if not own:
        return ""
    return (f"; from each client's own connect to a tick of each token: median {own['median']:.1f} s, "
            f"p99 {own['p99']:.1f} s, max {own['max']:.1f} s")
