"""`python -m ticker.sim`: run the Kite simulator (see `ticker.sim.server`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import date, time

from ticker.sim.market import HISTORY_PER_TOKEN
from ticker.sim.replay import ReplaySpec, parse_speed
from ticker.sim.server import run
from ticker.sim.state import (
    DEFAULT_REDIRECT_URL,
    KITE_MAX_CONNECTIONS_PER_KEY,
    KITE_MAX_TOKENS_PER_CONNECTION,
)


def parser() -> argparse.ArgumentParser:
    """The command-line flags."""
    p = argparse.ArgumentParser(prog="python -m ticker.sim", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    p.add_argument("--seed", type=int, default=1, help="seeds the universe and prices")
    p.add_argument("--tick-rate", type=float, default=1.0,
                   help="ticks per second per subscribed instrument")
    p.add_argument("--account", action="append", default=[], metavar="KEY:SECRET[:ACCESS_TOKEN]",
                   help="repeatable; default sim_key:sim_secret:sim_access_token")
    p.add_argument("--redirect-url", default=DEFAULT_REDIRECT_URL,
                   help="where /connect/login redirects with the request token")
    p.add_argument("--max-tokens-per-connection", type=int, default=KITE_MAX_TOKENS_PER_CONNECTION)
    p.add_argument("--max-connections-per-key", type=int, default=KITE_MAX_CONNECTIONS_PER_KEY)
    p.add_argument("--trading-date", type=date.fromisoformat, default=None,
                   help="YYYY-MM-DD; default today in IST")
    p.add_argument("--token-expiry", type=time.fromisoformat, default=None, metavar="HH:MM",
                   help="access tokens die daily at this IST time (Kite: about 06:00); default never")
    p.add_argument("--sent-history", type=int, default=HISTORY_PER_TOKEN, metavar="N",
                   help="ticks kept per subscribed token for /_sim/sent (about 220 bytes each: "
                        "lower it for load tests with thousands of tokens)")
    p.add_argument("--replay", metavar="DIR", default=None,
                   help="serve a recorded day from this recording directory (RECORD_DIR) instead of the random market")
    p.add_argument("--replay-day", metavar="YYYY-MM-DD", default=None,
                   help="the IST date to replay; default the latest")
    p.add_argument("--replay-speed", type=parse_speed, default=1.0, metavar="1|N|max",
                   help="1: recorded pacing; N: N times faster; max: as fast as the clients take it")
    p.add_argument("--replay-loop", action="store_true", help="play the day again when it ends (default: stop)")
    return p


def replay_spec(args: argparse.Namespace) -> ReplaySpec | None:
    """The replay the flags ask for, if any."""
    if not args.replay:
        return None
    return ReplaySpec(args.replay, args.replay_day, args.replay_speed, args.replay_loop)


def main(argv: Sequence[str] | None = None) -> None:
    """Parse flags and serve until interrupted."""
    args = parser().parse_args(argv)
    try:
        replay = replay_spec(args)
        if replay:
            replay.chosen_day()
    except ValueError as exc:
        parser().error(str(exc))
    run(args.host, args.port, args.seed, args.tick_rate, args.account,
        redirect_url=args.redirect_url,
        max_tokens_per_connection=args.max_tokens_per_connection,
        max_connections_per_key=args.max_connections_per_key,
        trading_date=args.trading_date, token_expiry=args.token_expiry,
        sent_history=args.sent_history, replay=replay)


if __name__ == "__main__":
    main()
