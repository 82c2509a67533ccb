"""The simulator's configuration and the state its HTTP handlers share."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, time
from pathlib import Path

from aiohttp import web

from ticker.feed.recording import read_day
from ticker.sim.accounts import DEFAULT_ACCOUNT, AccountSpec, AccountStore
from ticker.sim.market import HISTORY_PER_TOKEN, Market
from ticker.sim.replay import Replay, ReplayMarket, ReplaySpec, placeholder, recorded_tokens
from ticker.sim.stream import TickerHub
from ticker.sim.universe import generate_universe, ist_today, to_csv

DEFAULT_REDIRECT_URL = "http://127.0.0.1:5000/kite/callback"
KITE_MAX_TOKENS_PER_CONNECTION = 3000
KITE_MAX_CONNECTIONS_PER_KEY = 3


@dataclass(frozen=True)
class SimConfig:
    """Everything that shapes a simulator run (the CLI flags map onto these)."""

    seed: int = 1
    tick_rate: float = 1.0  # market steps per second for every subscribed instrument
    accounts: tuple[AccountSpec, ...] = (DEFAULT_ACCOUNT,)
    redirect_url: str = DEFAULT_REDIRECT_URL  # where /connect/login sends the browser
    max_tokens_per_connection: int = KITE_MAX_TOKENS_PER_CONNECTION
    max_connections_per_key: int = KITE_MAX_CONNECTIONS_PER_KEY
    trading_date: date | None = None  # None: today in IST
    token_expiry: time | None = None  # daily IST expiry of access tokens (Kite: ~06:00); None: never
    sent_history: int = HISTORY_PER_TOKEN  # ticks kept per token for /_sim/sent (~220 bytes each)
    replay: ReplaySpec | None = None  # a recorded day to serve instead of the random market


class Simulator:
    """The universe, accounts, market and ticker hub of one simulator instance."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        spec = config.replay
        day = spec.chosen_day() if spec else None  # ValueError when there is nothing to replay
        self.trading_date = config.trading_date or (date.fromisoformat(day) if day else ist_today())
        self.instruments = generate_universe(config.seed, self.trading_date)
        self.by_token = {row.instrument_token: row for row in self.instruments}
        self.accounts = AccountStore(config.accounts, config.token_expiry)
        self.replay: Replay | None = None
        if spec and day:
            self._add_recorded_tokens(spec, day)
            market = ReplayMarket(self.by_token, config.sent_history)
            self.hub = self._hub(market)
            self.replay = Replay(spec, day, self.hub, market)
        else:
            self.hub = self._hub(Market(self.by_token, config.seed, config.sent_history))
        self._csv: dict[str, bytes] = {}

    def _hub(self, market: Market | ReplayMarket) -> TickerHub:
        return TickerHub(market, self.accounts, self.config.tick_rate,
                         self.config.max_tokens_per_connection, self.config.max_connections_per_key)

    def _add_recorded_tokens(self, spec: ReplaySpec, day: str) -> None:
        """Every recorded token must be in the universe (see ticker.sim.replay)."""
        missing = sorted(recorded_tokens(read_day(Path(spec.directory), day)) - self.by_token.keys())
        extra = [placeholder(token) for token in missing]
        self.instruments = [*self.instruments, *extra]
        self.by_token.update((row.instrument_token, row) for row in extra)

    def instruments_csv(self, exchange: str | None = None) -> bytes:
        """Kite's instruments CSV, all or one exchange's, built once and cached."""
        key = exchange or ""
        if key not in self._csv:
            rows = (r for r in self.instruments if exchange in (None, r.exchange))
            self._csv[key] = to_csv(rows).encode()
        return self._csv[key]


SIM = web.AppKey("sim", Simulator)
