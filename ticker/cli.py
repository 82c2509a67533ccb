"""`flask` commands for operators: migrations, instruments, development JWTs, the simulator."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import AppGroup

db_cli = AppGroup("db", help="Database migrations (Alembic).")
instruments_cli = AppGroup("instruments", help="The instrument registry.")
jwt_cli = AppGroup("jwt", help="Development JWTs.")
sim_cli = AppGroup("sim", help="The bundled Kite simulator.")
candles_cli = AppGroup("candles", help="Candles built from the tick bus.")


@db_cli.command("create")
def db_create() -> None:
    """Create the configured database if it does not exist (local runs and tests)."""
    from ticker.registry import migrate

    created = migrate.create_database(current_app.config["DATABASE_URL"])
    click.echo("created the database" if created else "the database exists")


@db_cli.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION (default: head)."""
    from ticker.registry import migrate

    migrate.upgrade(current_app.config["DATABASE_URL"], revision)


@db_cli.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Revert migrations down to REVISION."""
    from ticker.registry import migrate

    migrate.downgrade(current_app.config["DATABASE_URL"], revision)


@instruments_cli.command("load")
@click.option("--force", is_flag=True, help="Accept a dump much smaller than the current registry.")
def instruments_load(force: bool) -> None:
    """Reload the registry from Kite's (or the simulator's) instruments dump, with a summary."""
    from ticker.registry.commands import reload_with_progress

    reload_with_progress(force)


@jwt_cli.command("mint")
@click.option("--user", default="dev", show_default=True, help="The token's subject.")
@click.option("--ttl", default=3600 * 12, show_default=True, help="Lifetime in seconds.")
@click.option("--admin", is_flag=True, help="Add the admin claim (for /ws/stats).")
@click.option("--exchanges", default=None, metavar="NSE,BSE",
              help="Entitle the token to these Kite exchanges only (the entitlements claim); default: all.")
def jwt_mint(user: str, ttl: int, admin: bool, exchanges: str | None) -> None:
    """Print a JWT signed with the development (or configured) private key."""
    from ticker.web.auth import mint

    codes = None if exchanges is None else [code.strip() for code in exchanges.split(",") if code.strip()]
    click.echo(mint(user, timedelta(seconds=ttl), admin=admin, exchanges=codes))


@sim_cli.command("run")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True)
@click.option("--seed", default=1, show_default=True)
@click.option("--tick-rate", default=1.0, show_default=True, help="Ticks per second per instrument.")
@click.option("--replay", "replay_dir", default=None, metavar="DIR",
              help="Serve a recorded day from this recording directory (RECORD_DIR) instead of the random market.")
@click.option("--replay-day", default=None, metavar="YYYY-MM-DD", help="The IST date to replay; default the latest.")
@click.option("--replay-speed", default="1", show_default=True, metavar="1|N|max",
              help="1: recorded pacing; N: N times faster; max: as fast as the clients take it.")
@click.option("--replay-loop", is_flag=True, help="Play the day again when it ends (default: stop).")
def sim_run(host: str, port: int, seed: int, tick_rate: float, replay_dir: str | None, replay_day: str | None,
            replay_speed: str, replay_loop: bool) -> None:
    """Run the Kite simulator (ticker WebSocket and REST API on one port), or replay a recording."""
    from ticker.sim.replay import ReplaySpec, parse_speed
    from ticker.sim.server import run

    try:
        speed = parse_speed(replay_speed)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--replay-speed") from exc
    replay = ReplaySpec(replay_dir, replay_day, speed, replay_loop) if replay_dir else None
    try:
        if replay:
            replay.chosen_day()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--replay/--replay-day") from exc
    run(host=host, port=port, seed=seed, tick_rate=tick_rate, replay=replay)


@sim_cli.command("make-day")
@click.option("--out", "directory", default="instance/recordings", show_default=True, type=click.Path())
@click.option("--date", "day", default=None, help="YYYY-MM-DD (IST); default today.")
@click.option("--instruments", default="NSE:INFY,NSE:RELIANCE,NFO:NIFTY26DECFUT,NSE:NIFTY 50",
              show_default=True, help="Comma-separated EXCHANGE:TRADINGSYMBOL streamed from the open.")
@click.option("--illiquid", default="BSE:INFY", show_default=True, help="One rarely traded instrument ('' for none).")
@click.option("--late-starter", default="NSE:TCS", show_default=True,
              help="One instrument that starts streaming mid-session ('' for none).")
@click.option("--start", default="09:15", show_default=True)
@click.option("--end", default="15:30", show_default=True)
@click.option("--seed", default=7, show_default=True)
def sim_make_day(directory: str, day: str | None, instruments: str, illiquid: str, late_starter: str,
                 start: str, end: str, seed: int) -> None:
    """Write a simulated trading day's recording (full-mode frames with a feed's quirks)."""
    from datetime import date, time

    from ticker.sim.day import DayPlan, instruments_by_symbol, make_day
    from ticker.sim.universe import ist_today

    trading_date = date.fromisoformat(day) if day else ist_today()
    symbols = [s.strip() for s in instruments.split(",") if s.strip()]
    extra = [s for s in (illiquid, late_starter) if s]
    found = instruments_by_symbol(seed, trading_date, symbols + extra)
    plan = DayPlan(trading_date, found[:len(symbols)], seed=seed,
                   start=time.fromisoformat(start), end=time.fromisoformat(end),
                   illiquid=found[len(symbols)] if illiquid else None,
                   late_starter=found[-1] if late_starter else None)
    report = make_day(Path(directory), plan)
    click.echo(f"{report.path}: {report.frames} frames, {report.ticks} ticks, "
               f"{report.late_packets} late packets, gap {report.gap}, volume reset {report.reset}")


@candles_cli.command("run")
def candles_run() -> None:
    """Run the candle builder until SIGTERM or SIGINT (the Procfile's `candles`)."""
    import signal

    from ticker.bus.connection import redis_client
    from ticker.candles.builder import CandleService
    from ticker.db import engine_for

    config = current_app.config
    if config.get("TICK_BUS_URL"):
        # The builder reads the single-Redis tick channels; on a cluster bus it would read
        # nothing and build nothing, without a word. Refuse instead, saying why.
        raise click.ClickException("candles need the tick bus on REDIS_URL: the builder does not read a "
                                   "cluster tick bus (TICK_BUS_URL) yet")
    stopping: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, _frame: stopping.append(number))
    service = CandleService(redis_client(config["REDIS_URL"]), engine_for(config["DATABASE_URL"]),
                            config["CANDLE_CLOSE_GRACE_SECS"], config["CANDLE_INTERVALS"])
    service.run(lambda: bool(stopping))


@candles_cli.command("check")
def candles_check() -> None:
    """Exit 0 when a candle builder reported in the last seconds, 1 otherwise (a health check)."""
    import time

    from ticker.bus.connection import redis_client
    from ticker.candles.builder import builder_report

    report = builder_report(redis_client(current_app.config["REDIS_URL"], "probe"), time.time())
    click.echo(report or "no candle builder has reported")
    if not report or not report["up"]:
        raise SystemExit(1)


def register(app: Flask) -> None:
    for group in (db_cli, instruments_cli, jwt_cli, sim_cli, candles_cli):
        app.cli.add_command(group)
    from ticker.registry.commands import accounts_cli

    app.cli.add_command(accounts_cli)
