"""The simulator's configuration and the state its HTTP handlers share."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, time

from aiohttp import web

from ticker.sim.accounts import DEFAULT_ACCOUNT, AccountSpec, AccountStore
from ticker.sim.market import HISTORY_PER_TOKEN, Market
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


class Simulator:
    """The universe, accounts, market and ticker hub of one simulator instance."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.trading_date = config.trading_date or ist_today()
        self.instruments = generate_universe(config.seed, self.trading_date)
        self.by_token = {row.instrument_token: row for row in self.instruments}
        self.accounts = AccountStore(config.accounts, config.token_expiry)
        self.market = Market(self.by_token, config.seed, config.sent_history)
        self.hub = TickerHub(self.market, self.accounts, config.tick_rate,
                             config.max_tokens_per_connection, config.max_connections_per_key)
        self._csv: dict[str, bytes] = {}

    def instruments_csv(self, exchange: str | None = None) -> bytes:
        """Kite's instruments CSV, all or one exchange's, built once and cached."""
        key = exchange or ""
        if key not in self._csv:
            rows = (r for r in self.instruments if exchange in (None, r.exchange))
            self._csv[key] = to_csv(rows).encode()
        return self._csv[key]


SIM = web.AppKey("sim", Simulator)
