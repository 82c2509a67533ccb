"""The Python client (clients/python): kiteconnect.KiteTicker's interface against the real service.

`kiteconnect.KiteTicker` is the oracle for the tick dicts: its own example script runs with only
its import and constructor changed, and its `_parse_binary` says which keys and types a tick of
each mode has.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from datetime import datetime, timedelta

import pytest
from kiteconnect import KiteTicker as OracleTicker
from sqlalchemy import text
from ticker_client import AsyncTicker, GapTracker, KiteTicker, to_kite
from ticker_client.policy import backoff_delay, connect_refusal_is_final, reauth_delay
from ticker_client.subscriptions import Subscriptions

from tests.clients.conftest import CLIENT_SRC
from tests.support.clients import clients_connected
from tests.support.processes import wait_for
from tests.support.proxy import TcpProxy
from ticker.bus import ticks as bus_ticks
from ticker.db import engine_for
from ticker.feed import protocol

RELIANCE = 738561  # NSE:RELIANCE, as in kiteconnect's example (exchange token 2885 << 8 | segment 1)
NIFTY_50 = 256265  # an index: not tradable, its own packet shapes
STAMPS = {"seq", "epoch"}


def equities(database: str, count: int) -> list[int]:
    with engine_for(database).connect() as connection:
        rows = connection.execute(text(
            "SELECT instrument_token FROM instruments WHERE segment = 'NSE' AND instrument_token <> :r "
            "ORDER BY 1 OFFSET 40 LIMIT :n"), {"r": RELIANCE, "n": count})
        return [row[0] for row in rows]


class Recorder:
    """Callbacks of a `ticker_client.KiteTicker`, recorded."""

    def __init__(self, ticker: KiteTicker):
        self.ticker = ticker
        self.ticks: list[dict] = []
        self.events: dict[str, list] = defaultdict(list)
        self.lock = threading.Lock()
        ticker.on_ticks = lambda ws, ticks: self._add_ticks(ticks)
        for name in ("on_connect", "on_close", "on_error", "on_reconnect", "on_noreconnect", "on_gap"):
            setattr(ticker, name, self._recorder(name))

    def _add_ticks(self, ticks):
        with self.lock:
            self.ticks.extend(ticks)

    def _recorder(self, name):
        return lambda ws, *args: self.events[name].append(args)

    def modes(self) -> dict[int, str]:
        """The mode of each token's latest tick."""
        with self.lock:
            return {tick["instrument_token"]: tick["mode"] for tick in self.ticks}

    def wait_for_modes(self, wanted: dict[int, str], timeout: float = 10) -> None:
        wait_for(lambda: all(self.modes().get(t) == m for t, m in wanted.items()), timeout, f"ticks in {wanted}")


@pytest.fixture
def ticker(stack, make_token):
    started = []

    def make(root: str | None = None, **kwargs) -> Recorder:
        kws = KiteTicker("any_api_key", kwargs.pop("access_token", None) or make_token("pyclient"),
                         root=root or stack["url"], **kwargs)
        started.append(kws)
        return Recorder(kws)

    yield make
    for kws in started:
        kws.close()


# (1) kiteconnect's own example (kiteconnect/ticker.py's docstring), import line and constructor changed.
EXAMPLE = '''
import logging
from ticker_client import KiteTicker

logging.basicConfig(level=logging.DEBUG)

# Initialise
kws = KiteTicker("your_api_key", {jwt!r}, root={root!r})

def on_ticks(ws, ticks):
    # Callback to receive ticks.
    logging.debug("Ticks: {{}}".format(ticks))

def on_connect(ws, response):
    # Callback on successful connect.
    # Subscribe to a list of instrument_tokens (RELIANCE and ACC here).
    ws.subscribe([738561, 5633])

    # Set RELIANCE to tick in `full` mode.
    ws.set_mode(ws.MODE_FULL, [738561])

def on_close(ws, code, reason):
    # On connection close stop the event loop.
    # Reconnection will not happen after executing `ws.stop()`
    ws.stop()

# Assign the callbacks.
kws.on_ticks = on_ticks
kws.on_connect = on_connect
kws.on_close = on_close

# Infinite loop on the main thread. Nothing after this will run.
# You have to use the pre-defined callbacks to manage subscriptions.
kws.connect()
'''


def test_kiteconnect_example_runs_unchanged_and_prints_ticks(stack, make_token, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(EXAMPLE.format(jwt=make_token("example"), root=stack["url"]))
    env = {**os.environ, "PYTHONPATH": str(CLIENT_SRC)}
    full = "'mode': 'full', 'instrument_token': 738561"
    lines = run_until(script, env, lambda line: line.startswith("DEBUG:root:Ticks: [") and full in line)
    tick_line = next(line for line in lines if full in line)
    assert "'depth': {'buy': [{'quantity':" in tick_line
    assert "'last_trade_time': datetime.datetime(" in tick_line


def test_readme_example_prints_ticks(stack, make_token, tmp_path):
    readme = (CLIENT_SRC.parents[0] / "README.md").read_text()
    example = readme.split("```python\n", 1)[1].split("```", 1)[0]
    script = tmp_path / "readme_example.py"
    script.write_text(example.replace("http://127.0.0.1:5000", stack["url"]))
    env = {**os.environ, "PYTHONPATH": str(CLIENT_SRC), "JWT": make_token("readme")}
    lines = run_until(script, env, lambda line: "INFO:root:738561 full " in line)
    assert any(line.startswith("INFO:root:738561 full ") and " seq=" in line for line in lines)


def run_until(script, env, seen) -> list[str]:
    """Run `script` until a line of its stderr satisfies `seen` (15 s at most); its lines."""
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
    try:
        wait_for(lambda: any(seen(line) for line in lines) or proc.poll() is not None, 15, f"{script.name}'s output")
        assert proc.poll() is None, "".join(lines)[-3000:]
        return lines
    finally:
        proc.kill()
        proc.wait(5)


# (2) The tick dicts: what kiteconnect's parser makes of a packet of the same mode.

def oracle_tick(token: int, mode: str) -> dict:
    market = {"instrument_token": token, "last_price": 150235, "last_traded_quantity": 12,
              "average_traded_price": 149980, "volume_traded": 183422, "total_buy_quantity": 50211,
              "total_sell_quantity": 48820, "open": 149000, "high": 150550, "low": 148810, "close": 149500,
              "last_trade_time": 1795666500, "oi": 7, "oi_day_high": 9, "oi_day_low": 3,
              "exchange_timestamp": 1795666503,
              "depth": {"buy": [(10, 150230, 2)] * 5, "sell": [(11, 150240, 3)] * 5}}
    frame = protocol.encode_frame([protocol.encode_packet(market, mode)])
    return OracleTicker("k", "t")._parse_binary(frame)[0]


def shape(value):
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value[:1]]
    return type(value)


@pytest.mark.parametrize("mode", ["ltp", "quote", "full"])
def test_service_tick_becomes_exactly_what_kiteconnect_parses(mode):
    for token in (RELIANCE, NIFTY_50):
        frame = protocol.encode_frame([protocol.encode_packet(_market(token), mode)])
        served = bus_ticks.decode(bus_ticks.encode({**protocol.parse_frame(frame)[0], "seq": 3, "epoch": 1,
                                                    "ingest_ts": 1795666503123}))
        expected = OracleTicker("k", "t")._parse_binary(frame)[0]
        assert to_kite(served) == {**expected, "seq": 3, "epoch": 1}


def _market(token: int) -> dict:
    return {"instrument_token": token, "last_price": 150235, "open": 149000, "high": 150550, "low": 148810,
            "close": 149500, "volume_traded": 5, "last_trade_time": 1795666500, "exchange_timestamp": 1795666503,
            "depth": {"buy": [(10, 150230, 2)], "sell": [(11, 150240, 3)]}}


def test_live_ticks_have_kiteconnects_keys_and_types_in_each_mode(ticker, database):
    ltp, quote, full = equities(database, 3)
    client = ticker()
    client.ticker.subscribe([ltp, quote, full])
    client.ticker.set_mode(KiteTicker.MODE_LTP, [ltp])
    client.ticker.set_mode(KiteTicker.MODE_FULL, [full])
    client.ticker.connect(threaded=True)
    client.wait_for_modes({ltp: "ltp", quote: "quote", full: "full"})

    for token, mode in ((ltp, "ltp"), (quote, "quote"), (full, "full")):
        tick = next(t for t in client.ticks if t["instrument_token"] == token)
        expected = oracle_tick(token, mode)
        assert set(tick) == set(expected) | STAMPS, mode
        assert shape({k: v for k, v in tick.items() if k not in STAMPS}) == shape(expected), mode
        assert isinstance(tick["seq"], int) and isinstance(tick["epoch"], int)
    assert isinstance(next(t for t in client.ticks if t["mode"] == "full")["exchange_timestamp"], datetime)
    assert client.ticker.is_connected()


def test_over_long_polling_the_subscriptions_made_before_connect_are_sent(ticker, database):
    """Over polling, CONNECT and `connected` arrive in one HTTP response: the `connected` event
    runs before python-socketio's connect() returns and marks the client connected."""
    token, = equities(database, 1)
    client = ticker(transports=["polling"])
    client.ticker.subscribe([token])
    client.ticker.connect(threaded=True)
    client.wait_for_modes({token: "quote"})


@pytest.mark.parametrize("transport", ["polling", "websocket"])
def test_close_returns_at_once_and_the_service_is_told(ticker, stack, database, transport):
    """`close()` ends the session with the service at once, on either transport, every time.
    (It once raced its own session's end: a second disconnect emptied Engine.IO's send queue
    before the CLOSE packet left, so the service kept the session until its ping timed out and
    `close()` blocked for Engine.IO's 30-second write-loop timeout, one time in two.)"""
    token, = equities(database, 1)
    before = clients_connected(stack["url"])
    for attempt in range(4):
        client = ticker(transports=[transport])
        client.ticker.subscribe([token])
        client.ticker.connect(threaded=True)
        client.wait_for_modes({token: "quote"})
        assert clients_connected(stack["url"]) == before + 1
        closing = threading.Thread(target=client.ticker.close, daemon=True)
        closing.start()
        closing.join(5)
        assert not closing.is_alive(), f"close() still running after 5 s (attempt {attempt + 1})"
        wait_for(lambda: clients_connected(stack["url"]) == before, 3,
                 f"the service to see the client leave (attempt {attempt + 1})")
        wait_for(lambda c=client: c.events["on_close"], 3, "on_close")


def test_live_candles_come_with_todays_history_and_outlive_a_mode_change_and_a_reconnect(ticker, stack, database):
    host, port = stack["url"].rsplit("//", 1)[1].split(":")
    proxy = TcpProxy((host, int(port))).start()
    try:
        token = equities(database, 10)[9]
        client = ticker(root=f"http://127.0.0.1:{proxy.port}")
        kws, candles = client.ticker, []
        kws.on_candles = lambda ws, got: candles.extend(got)
        kws.subscribe_candles([token], ["minute", "second"])
        kws.connect(threaded=True)

        wait_for(lambda: {c["interval"] for c in candles} == {"minute", "second"}, 15, "today's candles")
        assert kws.subscribed_tokens == {token: "quote"}
        assert all(c["instrument_token"] == token and c["date"].utcoffset() == timedelta(hours=5, minutes=30)
                   and c["date"].second == 0 for c in candles if c["interval"] == "minute")
        kws.set_mode(kws.MODE_FULL, [token])
        client.wait_for_modes({token: "full"})
        seen = len(candles)
        wait_for(lambda: any(c["closed"] and c["interval"] == "second" for c in candles[seen:]), 10,
                 "candles to go on after the mode change")

        assert proxy.reset() >= 1
        wait_for(lambda: client.events["on_reconnect"], 5, "on_reconnect")
        seen = len(candles)
        wait_for(lambda: {c["interval"] for c in candles[seen:]} == {"minute", "second"}, 15,
                 "candles again after the reconnect")
        client.wait_for_modes({token: "full"})

        kws.subscribe_candles([token], ["hour"])  # no such interval: refused, the ticks go on
        wait_for(lambda: any(e[0] == "bad_request" for e in client.events["on_error"]), 5, "the refusal")
        time.sleep(1)  # the subscribe without candles that follows the refusal is acknowledged
        assert [e[0] for e in client.events["on_error"]].count("bad_request") == 1  # told once, as kiteconnect
        seen, ticks = len(candles), len(client.ticks)
        time.sleep(2.5)
        assert len(candles) == seen and len(client.ticks) > ticks
        assert kws.subscribed_tokens == {token: "full"}
    finally:
        proxy.stop()


# (3) Reconnect: the connection is cut; every token comes back in its mode.

def test_reconnects_and_resubscribes_every_token_in_its_mode(ticker, stack, database):
    host, port = stack["url"].rsplit("//", 1)[1].split(":")
    proxy = TcpProxy((host, int(port))).start()
    try:
        ltp, full = equities(database, 5)[3:5]
        client = ticker(root=f"http://127.0.0.1:{proxy.port}")
        client.ticker.on_connect = lambda ws, hello: (
            ws.subscribe([ltp, full]), ws.set_mode(ws.MODE_LTP, [ltp]), ws.set_mode(ws.MODE_FULL, [full]))
        client.ticker.connect(threaded=True)
        client.wait_for_modes({ltp: "ltp", full: "full"})
        client.ticker.on_connect = None  # from here on, only the client's own resubscription

        assert proxy.reset() >= 1
        wait_for(lambda: client.events["on_reconnect"], 5, "on_reconnect")
        with client.lock:
            client.ticks.clear()
        client.wait_for_modes({ltp: "ltp", full: "full"})
        assert {t["mode"] for t in client.ticks if t["instrument_token"] == full} == {"full"}
        assert client.events["on_reconnect"][0] == (1,)
        assert client.events["on_close"] and not client.events["on_noreconnect"]
        assert client.ticker.subscribed_tokens == {ltp: "ltp", full: "full"}
    finally:
        proxy.stop()


def test_a_refused_token_without_a_provider_ends_in_on_noreconnect(ticker, make_token):
    client = ticker(access_token=make_token("expired", ttl=-3600))
    client.ticker.connect(threaded=True)
    wait_for(lambda: client.events["on_noreconnect"], 5, "on_noreconnect")
    assert client.events["on_error"][0][0] == "token_expired"
    assert not client.events["on_reconnect"]


def test_a_token_provider_is_asked_again_after_a_refusal(ticker, make_token, database):
    token = equities(database, 6)[5]
    given = iter([make_token("late", ttl=-3600)])
    client = ticker(token_provider=lambda: next(given, None) or make_token("late"))
    client.ticker.subscribe([token])
    client.ticker.connect(threaded=True)
    client.wait_for_modes({token: "quote"})
    assert client.events["on_error"][0][0] == "token_expired"
    assert client.events["on_reconnect"] == [(1,)] and not client.events["on_noreconnect"]


# (4) Gaps, stale ticks and the rest of the pure logic.

def tick(seq, epoch=1, token=5, **extra):
    return {"instrument_token": token, "seq": seq, "epoch": epoch, **extra}


def test_gap_is_a_seq_jump_within_one_epoch():
    gaps = GapTracker()
    assert gaps.observe(tick(7)) == (True, None)
    assert gaps.observe(tick(8)) == (True, None)
    assert gaps.observe(tick(11)) == (True, (9, 11))
    assert gaps.observe(tick(11)) == (False, None)  # a repeat is stale, not shown again
    assert gaps.observe(tick(10)) == (False, None)
    assert gaps.observe(tick(2, epoch=2)) == (True, None)  # a new epoch starts afresh
    assert gaps.observe(tick(9, epoch=2, snapshot=True)) == (True, None)  # a snapshot catches up
    assert gaps.observe(tick(10, epoch=2)) == (True, None)
    assert gaps.observe(tick(3, token=6)) == (True, None)  # tokens are counted apart
    gaps.forget([5])
    assert gaps.observe(tick(1, epoch=2)) == (True, None)


def test_on_gap_is_called_with_token_expected_and_got():
    kws = KiteTicker(access_token="jwt")
    seen, gaps = [], []
    kws.on_ticks = lambda ws, ticks: seen.extend(t["seq"] for t in ticks)
    kws.on_gap = lambda ws, *gap: gaps.append(gap)
    kws._on_ticks([tick(1), tick(2)])
    kws._on_ticks([tick(5), tick(5), tick(4, epoch=2, snapshot=True)])
    assert seen == [1, 2, 5, 4] and gaps == [(5, 3, 5)]


def test_subscriptions_go_one_request_at_a_time_and_resubscribe_after_a_reconnect():
    subs = Subscriptions()
    subs.want([1, 2], "quote")
    subs.want([2], "full")
    request = subs.next_request()
    assert request == ("subscribe", {"tokens": [1], "mode": "quote"})
    subs.acked(*request, {"tokens": [1], "mode": "quote", "total": 1, "rejected": []})
    request = subs.next_request()
    refusals = subs.acked(*request, {"tokens": [], "mode": "full", "total": 1,
                                     "rejected": [{"token": 2, "code": "not_entitled", "message": "no"}]})
    assert refusals == [("not_entitled", "2: no")] and subs.wanted == {1: "quote"}
    assert subs.next_request() is None
    subs.connection_lost()
    assert subs.next_request() == ("subscribe", {"tokens": [1], "mode": "quote"})


def test_a_tokens_candles_go_with_every_subscribe_of_it():
    subs = Subscriptions()
    subs.want([1], "quote")
    subs.want_candles([1, 2], ["second", "minute"], "ltp")
    request = subs.next_request()
    assert request == ("subscribe", {"tokens": [1], "mode": "quote", "candles": ["minute", "second"]})
    subs.acked(*request, {"tokens": [1], "mode": "quote", "total": 1, "rejected": [], "candles": ["minute", "second"]})
    request = subs.next_request()
    assert request == ("subscribe", {"tokens": [2], "mode": "ltp", "candles": ["minute", "second"]})
    subs.acked(*request, {"tokens": [2], "mode": "ltp", "total": 2, "rejected": []})
    subs.want([1], "full")  # a new mode keeps the candles
    request = subs.next_request()
    assert request == ("subscribe", {"tokens": [1], "mode": "full", "candles": ["minute", "second"]})
    subs.acked(*request, {"tokens": [1], "mode": "full", "total": 2, "rejected": []})
    subs.want_candles([2], ["hour"], "quote")
    request = subs.next_request()
    subs.refused(request[1])  # an interval not built: the token stays, without candles
    request = subs.next_request()
    assert request == ("subscribe", {"tokens": [2], "mode": "ltp"})
    subs.acked(*request, {"tokens": [2], "mode": "ltp", "total": 2, "rejected": []})
    subs.drop([1])
    subs.want([1], "quote")  # subscribed again: the old candles are not wanted again
    assert subs.next_request() == ("subscribe", {"tokens": [1], "mode": "quote"})


def test_policy_backoff_and_renewal():
    assert connect_refusal_is_final("token_expired", has_token_provider=False)
    assert not connect_refusal_is_final("token_expired", has_token_provider=True)
    assert not connect_refusal_is_final("server_busy", has_token_provider=False)
    assert not connect_refusal_is_final(None, has_token_provider=False)  # the server is down: retry
    delays = [backoff_delay(attempt, 5) for attempt in range(1, 10)]
    assert 0.25 <= delays[0] <= 0.5 and all(2.5 <= d <= 5 for d in delays[5:])
    jwt = "x." + __import__("base64").urlsafe_b64encode(b'{"exp": 1000}').decode().rstrip("=") + ".y"
    assert reauth_delay(jwt, now=0) == 940 and reauth_delay(jwt, now=900) == 80 and reauth_delay("junk") is None


# (5) The asyncio stream.

def test_asyncio_stream_yields_ticks_of_its_mode(stack, make_token, database):
    token = equities(database, 8)[7]

    async def first_full_tick():
        client = AsyncTicker(stack["url"], make_token("async"))
        async for ticks in client.stream([token], mode="full"):
            return ticks[0]

    started = time.monotonic()
    got = asyncio.run(asyncio.wait_for(first_full_tick(), 10))
    assert got["instrument_token"] == token and got["mode"] == "full"
    assert isinstance(got["last_trade_time"], datetime) and {"seq", "epoch", "ingest_ts"} <= set(got)
    assert time.monotonic() - started < 10


def test_callbacks_run_one_at_a_time_in_the_order_ticks_arrived(ticker, database):
    """kiteconnect calls back on one thread, in order. python-engineio's client handles each
    incoming message on a thread of its own, so a slow `on_ticks` let later frames overtake it."""
    tokens = equities(database, 8)
    recorder = ticker(root=None)
    kws = recorder.ticker
    seen: dict[int, list[int]] = defaultdict(list)
    inside, overlaps = [0], [0]
    lock = threading.Lock()

    def on_ticks(ws, ticks):
        with lock:
            inside[0] += 1
            overlaps[0] += inside[0] > 1
        time.sleep(0.03)  # strategy code that takes its time
        with lock:
            for tick in ticks:
                seen[tick["instrument_token"]].append(tick["seq"])
            inside[0] -= 1

    kws.on_ticks = on_ticks
    kws.on_connect = lambda ws, response: ws.subscribe(tokens)
    kws.connect(threaded=True)
    wait_for(lambda: all(len(seen[t]) >= 4 for t in tokens), 20, "four ticks of every token")
    kws.close()
    assert overlaps[0] == 0, f"on_ticks ran {overlaps[0]} times while another call was still running"
    for token in tokens:
        assert seen[token] == sorted(set(seen[token])), (token, seen[token])
    assert not recorder.events["on_gap"], recorder.events["on_gap"]
