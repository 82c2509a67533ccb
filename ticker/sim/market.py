"""Simulated market: per-instrument state that moves one random-walk step per tick.

State is kept in integer price units (price * the segment's divisor), so every price is an exact
multiple of the tick size and goes straight into `protocol.encode_packet`. An instrument's
state is created on its first subscription from a start price seeded by (seed, token); after
that each `step` moves it. Invariants a test can rely on: last price > 0 and a multiple of the
tick size; high >= open, last >= low; volume and last_trade_time never decrease; best bid <
best ask; open interest only on derivatives. `ohlc.close` is the previous session's close,
which (as on Kite) may lie outside today's range.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from ticker.feed import protocol
from ticker.sim.universe import Instrument

HISTORY_PER_TOKEN = 500  # ticks kept per token for /_sim/sent: ~110 KB per subscribed token
INDEX_TICK_SIZE = 0.05  # Kite lists indices with tick size 0; their values move in 0.05 steps
STEP_VOLATILITY = 0.0004  # one step's standard deviation as a fraction of price
TRADE_PROBABILITY = 0.8  # share of steps that print a trade (volume, last_trade_time)
UINT32_MAX = 0xFFFFFFFF  # every packet field is a uint32: quantities saturate here


def _between(rng: random.Random, low: int, high: int) -> int:
    """A uniform int in [low, high]; `randint` is 4x slower and this runs ~25 times a step."""
    return low + int(rng.random() * (high - low + 1))


class InstrumentState:
    """One instrument's market in integer price units; `step` moves it, `tick` reads it."""

    def __init__(self, instrument: Instrument, seed: int, now: float) -> None:
        token = instrument.instrument_token
        self.token = token
        self.rng = random.Random(seed * 1_000_003 + token)
        self.is_index = protocol.segment_of(token) == protocol.INDICES
        self.is_derivative = instrument.is_derivative
        self.lot = max(1, instrument.lot_size)
        self.max_lots_per_trade = 10 if self.is_derivative else 1000  # equities trade in shares
        divisor = protocol.price_divisor(protocol.segment_of(token))
        self.tick_units = max(1, round((instrument.tick_size or INDEX_TICK_SIZE) * divisor))
        previous_close = instrument.last_price if instrument.last_price > 0 else 100.0
        self.close = self._on_tick(previous_close * divisor)
        self._open_session(int(now))

    def _on_tick(self, units: float) -> int:
        """`units` rounded to a positive multiple of the tick size."""
        return max(1, round(units / self.tick_units)) * self.tick_units

    def _open_session(self, now: int) -> None:
        """The session so far: a gap from the previous close and some range and volume."""
        rng, tick = self.rng, self.tick_units
        self.open = self._on_tick(self.close * (1 + rng.uniform(-0.01, 0.01)))
        self.high = self.open + tick * rng.randint(0, 20)
        self.low = max(tick, self.open - tick * rng.randint(0, 20))
        self.last = self.low + tick * rng.randint(0, (self.high - self.low) // tick)
        self.volume = 0 if self.is_index else self.lot * self.max_lots_per_trade * rng.randint(100, 10_000)
        self.turnover = self.volume * (self.open + self.last) / 2
        self.last_quantity = 0 if self.is_index else self.lot * rng.randint(1, self.max_lots_per_trade)
        self.last_trade_time = now - rng.randint(0, 30)
        self.exchange_timestamp = now
        self.buy_quantity = self.sell_quantity = 0
        self.oi = self.lot * rng.randint(1_000, 100_000) if self.is_derivative else 0
        self.oi_day_high = self.oi_day_low = self.oi
        self.depth: dict[str, list[tuple[int, int, int]]] = {"buy": [], "sell": []}
        self._move_book()

    def step(self, now: float) -> None:
        """One tick: a random walk of the price in whole ticks, maybe a trade, a new book."""
        rng, tick = self.rng, self.tick_units
        sigma = max(1.0, self.last / tick * STEP_VOLATILITY)
        self.last = max(tick, self.last + tick * round(rng.gauss(0, sigma)))
        self.high = max(self.high, self.last)
        self.low = min(self.low, self.last)
        second = int(now)
        self.exchange_timestamp = max(self.exchange_timestamp, second)
        if not self.is_index and rng.random() < TRADE_PROBABILITY:
            self._trade(second)
        if self.is_derivative:
            self._move_open_interest()
        self._move_book()

    def _trade(self, second: int) -> None:
        quantity = self.lot * _between(self.rng, 1, self.max_lots_per_trade)
        self.last_quantity = quantity
        self.volume = min(UINT32_MAX, self.volume + quantity)
        self.turnover += quantity * self.last
        self.last_trade_time = max(self.last_trade_time, second)

    def _move_open_interest(self) -> None:
        self.oi = max(0, min(UINT32_MAX, self.oi + self.lot * _between(self.rng, -20, 20)))
        self.oi_day_high = max(self.oi_day_high, self.oi)
        self.oi_day_low = min(self.oi_day_low, self.oi)

    def _move_book(self) -> None:
        """Five levels a side around the last price, one tick apart; the spread is one tick."""
        if self.is_index:
            return
        rng, tick = self.rng, self.tick_units
        best_bid = self.last - tick * _between(rng, 0, 1)
        self.depth = {
            "buy": [self._level(best_bid - i * tick) for i in range(protocol.DEPTH_LEVELS)],
            "sell": [self._level(best_bid + (i + 1) * tick) for i in range(protocol.DEPTH_LEVELS)],
        }
        self.buy_quantity = sum(q for q, _, _ in self.depth["buy"]) * _between(rng, 5, 50)
        self.sell_quantity = sum(q for q, _, _ in self.depth["sell"]) * _between(rng, 5, 50)

    def _level(self, price: int) -> tuple[int, int, int]:
        if price <= 0:
            return (0, 0, 0)  # an empty level, as Kite sends it
        return (self.lot * _between(self.rng, 1, 50), price, _between(self.rng, 1, 40))

    def tick(self) -> dict[str, Any]:
        """The state as the integer tick dict `protocol.encode_packet` takes."""
        average = round(self.turnover / self.volume) if self.volume else 0
        return {
            "instrument_token": self.token, "last_price": self.last,
            "last_traded_quantity": self.last_quantity, "average_traded_price": average,
            "volume_traded": self.volume, "total_buy_quantity": self.buy_quantity,
            "total_sell_quantity": self.sell_quantity, "open": self.open, "high": self.high,
            "low": self.low, "close": self.close, "last_trade_time": self.last_trade_time,
            "oi": self.oi, "oi_day_high": self.oi_day_high, "oi_day_low": self.oi_day_low,
            "exchange_timestamp": self.exchange_timestamp, "depth": self.depth,
        }


class Market:
    """All instruments' states, created lazily, with encoded packets cached per step."""

    def __init__(self, instruments: Mapping[int, Instrument], seed: int,
                 history: int = HISTORY_PER_TOKEN) -> None:
        self._instruments = instruments
        self._seed = seed
        self._history = history
        self._states: dict[int, InstrumentState] = {}
        self._packets: dict[int, dict[str, bytes]] = {}  # token -> mode -> packet, this step
        self._sent: dict[int, deque[bytes]] = {}  # token -> full packets, oldest first

    def knows(self, token: int) -> bool:
        """Whether the token is in the universe."""
        return token in self._instruments

    def ensure(self, token: int, now: float) -> None:
        """Create the token's state if this is its first subscription."""
        if token not in self._states:
            self._states[token] = InstrumentState(self._instruments[token], self._seed, now)
            self._sent[token] = deque(maxlen=self._history)
            self._record(token)

    def step(self, tokens: Iterable[int], now: float) -> None:
        """Move every given (already created) token one tick."""
        for token in tokens:
            self._states[token].step(now)
            self._record(token)

    def _record(self, token: int) -> None:
        full = protocol.encode_packet(self._states[token].tick(), protocol.MODE_FULL)
        self._packets[token] = {protocol.MODE_FULL: full}
        self._sent[token].append(full)

    def packet(self, token: int, mode: str) -> bytes:
        """The token's current packet in `mode` (encoded once per step)."""
        packets = self._packets[token]
        packet = packets.get(mode)
        if packet is None:
            packet = packets[mode] = protocol.encode_packet(self._states[token].tick(), mode)
        return packet

    def sent(self, token: int) -> list[dict[str, Any]]:
        """The token's last ticks (up to `history`), oldest first, as `parse_frame` gives them."""
        packets = list(self._sent.get(token, ()))
        return protocol.parse_frame(protocol.encode_frame(packets)) if packets else []
