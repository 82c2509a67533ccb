"""The simulator speaks Kite: the official `kiteconnect` clients against a real simulator process.

`KiteTicker` runs on Twisted, whose reactor starts once per process and cannot be restarted,
so each KiteTicker scenario runs in its own process (kite_ticker_scenario.py); both start
when this module does and run while the other tests go on. Plain `websocket-client`
connections test the limits and the `/_sim/` controls.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from datetime import time as dt_time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import requests
import websocket
from kiteconnect import KiteConnect
from kiteconnect.exceptions import InputException, TokenException

from ticker.feed import protocol
from ticker.sim.accounts import AccountSpec, AccountStore, checksum

SCENARIO = Path(__file__).with_name("kite_ticker_scenario.py")
SCENARIO_TIMEOUT_SECS = 40


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def instruments(kite_sim) -> list[dict]:
    """Every instrument, as `KiteConnect.instruments()` parses the dump."""
    return KiteConnect("sim_key", root=kite_sim.base_url).instruments()


@pytest.fixture(scope="module")
def watched(instruments) -> dict[str, dict]:
    """One instrument per kind the ticker scenario streams."""
    def first(**match):
        return next(i for i in instruments if all(i[k] == v for k, v in match.items()))

    return {
        "equity": first(tradingsymbol="RELIANCE", exchange="NSE"),
        "index": first(tradingsymbol="NIFTY 50", segment="INDICES"),
        "cds": first(segment="CDS-FUT", name="USDINR"),
        "mcx": first(segment="MCX-FUT", name="CRUDEOIL"),
    }


class Scenario:
    """A KiteTicker scenario process; `result()` waits for its JSON (killed by PID on timeout)."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen([sys.executable, str(SCENARIO), *args],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._result: dict | None = None

    def result(self) -> dict:
        if self._result is None:
            out, err = self.process.communicate(timeout=SCENARIO_TIMEOUT_SECS)
            assert out, err.decode(errors="replace")[-3000:]
            self._result = json.loads(out)
        return self._result

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


@pytest.fixture(scope="module", autouse=True)
def ticker_runs(kite_sim, watched):
    """Both KiteTicker scenarios, started with the module so they run while other tests do."""
    tokens = [i["instrument_token"] for i in watched.values()]
    runs = {
        "ticks": Scenario("ticks", kite_sim.ws_url, "k_ticker", "t_ticker", json.dumps(tokens)),
        "bad_token": Scenario("bad-token", kite_sim.ws_url, "k_bad", "not-a-valid-token"),
    }
    yield runs
    for run in runs.values():
        run.stop()


# -- websocket-client helpers ------------------------------------------------------------------


def connect(kite_sim, api_key: str, access_token: str | None = None) -> websocket.WebSocket:
    return websocket.create_connection(kite_sim.ticker_url(api_key, access_token), timeout=5)


def send(ws: websocket.WebSocket, action: str, value) -> None:
    ws.send(json.dumps({"a": action, "v": value}))


def receive_until(ws: websocket.WebSocket, wanted, timeout: float = 5.0):
    """Frames until `wanted(opcode, data)` is true; returns that frame's data."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        opcode, data = ws.recv_data()
        if wanted(opcode, data):
            return data
    raise AssertionError("the wanted frame did not arrive")


def is_error_frame(opcode: int, data: bytes) -> bool:
    return opcode == websocket.ABNF.OPCODE_TEXT and json.loads(data)["type"] == "error"


def is_tick_frame(opcode: int, data: bytes) -> bool:
    return opcode == websocket.ABNF.OPCODE_BINARY and len(data) > 1


def wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def open_connections(kite_sim, api_key: str) -> int:
    return kite_sim.get("/_sim/stats").json()["connections_per_key"].get(api_key, {}).get("now", 0)


# -- REST with KiteConnect -----------------------------------------------------------------------


def login(kite_sim, api_key: str = "sim_key") -> str:
    """Follow /connect/login like a browser would and return the request token."""
    response = requests.get(f"{kite_sim.base_url}/connect/login", params={"api_key": api_key, "v": 3},
                            allow_redirects=False, timeout=5)
    assert response.status_code == 302
    location = urlparse(response.headers["Location"])
    query = parse_qs(location.query)
    assert f"{location.scheme}://{location.netloc}{location.path}" == "http://127.0.0.1:5000/kite/callback"
    assert query["action"] == ["login"] and query["status"] == ["success"]
    return query["request_token"][0]


def test_login_flow_profile_renew_and_invalidate(kite_sim):
    kite = KiteConnect("sim_key", root=kite_sim.base_url)
    request_token = login(kite_sim)
    session = kite.generate_session(request_token, api_secret="sim_secret")
    assert session["api_key"] == "sim_key" and session["user_id"] == "SIM001"
    assert session["access_token"] and session["refresh_token"] and session["login_time"]
    assert kite.profile()["user_id"] == "SIM001"

    with pytest.raises(TokenException):  # request tokens are single use
        kite.generate_session(request_token, api_secret="sim_secret")
    with pytest.raises(InputException):  # wrong secret, wrong checksum
        kite.generate_session(login(kite_sim), api_secret="wrong")

    renewed = kite.renew_access_token(session["refresh_token"], api_secret="sim_secret")
    assert renewed["access_token"] != session["access_token"]
    assert kite.profile()["user_id"] == "SIM001"  # the client switched to the new token

    kite.invalidate_access_token()
    with pytest.raises(TokenException) as error:
        kite.profile()
    assert error.value.code == 403


def test_configured_access_token_works_without_login_and_bad_tokens_raise(kite_sim):
    assert KiteConnect("sim_key", "sim_access_token", root=kite_sim.base_url).profile()["user_id"] == "SIM001"
    with pytest.raises(TokenException):
        KiteConnect("sim_key", "wrong", root=kite_sim.base_url).profile()
    with pytest.raises(TokenException):
        KiteConnect("sim_key", root=kite_sim.base_url).profile()  # no token at all


def test_instruments_dump_has_every_segment(kite_sim, instruments):
    assert 90_000 <= len(instruments) <= 120_000
    assert {i["segment"] for i in instruments} >= {
        "NSE", "BSE", "INDICES", "NFO-FUT", "NFO-OPT", "BFO-OPT", "MCX-FUT", "MCX-OPT",
        "CDS-FUT", "CDS-OPT", "BCD-FUT", "BCD-OPT"}
    cds = KiteConnect("sim_key", root=kite_sim.base_url).instruments("CDS")
    assert cds and {i["exchange"] for i in cds} == {"CDS"}
    assert len(cds) == sum(1 for i in instruments if i["exchange"] == "CDS")
    assert kite_sim.get("/instruments").headers["Content-Type"].startswith("text/csv")


def test_tokens_die_at_the_daily_expiry_time_in_ist():
    store = AccountStore([AccountSpec("k", "s")], daily_expiry=dt_time(6, 0))
    ist = timezone(timedelta(hours=5, minutes=30))
    for issued, dies in ((datetime(2026, 11, 27, 10, 0), datetime(2026, 11, 28, 6, 0)),
                         (datetime(2026, 11, 28, 5, 0), datetime(2026, 11, 28, 6, 0))):
        request_token = store.issue_request_token("k")
        session = store.create_session("k", request_token, checksum("k", request_token, "s"),
                                       issued.replace(tzinfo=ist).timestamp())
        dies_at = dies.replace(tzinfo=ist).timestamp()
        assert store.is_valid("k", session["access_token"], dies_at - 1)
        assert not store.is_valid("k", session["access_token"], dies_at)


def test_refused_upgrade_is_kites_403_json(kite_sim):
    headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    response = requests.get(f"{kite_sim.base_url}/", params={"api_key": "sim_key", "access_token": "wrong"},
                            headers=headers, timeout=5)
    assert response.status_code == 403
    assert response.json()["status"] == "error" and response.json()["error_type"] == "TokenException"


# -- KiteTicker ------------------------------------------------------------------------------------


def _sent(kite_sim, token: int) -> list[dict]:
    return kite_sim.get("/_sim/sent", token=token).json()


def _matches(received: dict, sent: dict) -> bool:
    """A received tick is a (mode-sized) view of one full tick the simulator produced."""
    return all(sent[key] == value for key, value in received.items() if key != "mode")


def test_kite_ticker_gets_every_mode_for_every_kind(kite_sim, ticker_runs, watched):
    result = ticker_runs["ticks"].result()
    assert result["connects"] == 1 and result["errors"] == []
    seen = Counter((t["instrument_token"], t["mode"]) for t in result["ticks"])
    for instrument in watched.values():
        for mode in ("quote", "ltp", "full"):
            assert seen[instrument["instrument_token"], mode] >= 1, (instrument["tradingsymbol"], mode)


def test_kite_ticker_ticks_match_what_the_simulator_sent(kite_sim, ticker_runs, watched):
    ticks = ticker_runs["ticks"].result()["ticks"]
    for instrument in watched.values():
        token = instrument["instrument_token"]
        sent = _sent(kite_sim, token)
        received = [t for t in ticks if t["instrument_token"] == token]
        for tick in received:
            assert any(_matches(tick, s) for s in sent), tick
        full = [t for t in received if t["mode"] == "full"]
        assert full and full[-1] in sent  # a full tick is exactly what the simulator sent


def test_kite_ticker_ticks_are_plausible(ticker_runs, watched):
    ticks = ticker_runs["ticks"].result()["ticks"]
    for instrument in watched.values():
        tick_size = instrument["tick_size"] or 0.05  # Kite lists indices with tick size 0
        received = [t for t in ticks if t["instrument_token"] == instrument["instrument_token"]]
        for tick in received:
            price = tick["last_price"]
            assert price > 0 and abs(round(price / tick_size) * tick_size - price) < 1e-6
            assert tick["tradable"] is (instrument["segment"] != "INDICES")
            if "ohlc" in tick:
                ohlc = tick["ohlc"]
                assert ohlc["high"] >= max(ohlc["open"], price) >= min(ohlc["open"], price) >= ohlc["low"] > 0
            if "depth" in tick:
                assert tick["depth"]["buy"][0]["price"] < tick["depth"]["sell"][0]["price"]
                assert tick["exchange_timestamp"].endswith("+05:30")
        volumes = [t["volume_traded"] for t in received if "volume_traded" in t]
        assert volumes == sorted(volumes)


def test_kite_ticker_sees_heartbeats_and_order_updates(ticker_runs):
    result = ticker_runs["ticks"].result()
    assert result["heartbeats"] >= 2  # about one a second over ~4 s
    assert result["orders"] and result["orders"][0]["status"] == "COMPLETE"


def test_kite_ticker_with_a_bad_token_errors_and_closes_without_connecting(ticker_runs):
    result = ticker_runs["bad_token"].result()
    assert result["connects"] == 0
    assert result["errors"] and result["closes"]
    assert "403" in result["errors"][0][1]


# -- limits (websocket-client) ---------------------------------------------------------------------


def test_more_than_3000_tokens_on_a_connection_are_refused_with_an_error_frame(kite_sim, instruments):
    tokens = [i["instrument_token"] for i in instruments if i["segment"] == "NFO-OPT"][:3001]
    ws = connect(kite_sim, "k_tokens")
    try:
        send(ws, "subscribe", tokens)
        error = json.loads(receive_until(ws, is_error_frame))
        assert "3000" in error["data"] and "1 tokens ignored" in error["data"]
        frame = receive_until(ws, is_tick_frame)
        assert len(protocol.parse_frame(frame)) == 3000
        stats = kite_sim.get("/_sim/stats").json()
        (mine,) = [c for c in stats["connections"] if c["api_key"] == "k_tokens"]
        assert mine["tokens"] == 3000 and mine["max_tokens"] == 3000
    finally:
        ws.close()


def test_a_fourth_connection_per_key_is_refused_with_429(kite_sim):
    sockets = [connect(kite_sim, "k_limits") for _ in range(3)]
    try:
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            connect(kite_sim, "k_limits")
        assert refused.value.status_code == 429
        sockets.pop().close()
        wait_until(lambda: open_connections(kite_sim, "k_limits") == 2)
        sockets.append(connect(kite_sim, "k_limits"))  # a freed slot can be used again
        stats = kite_sim.get("/_sim/stats").json()["connections_per_key"]["k_limits"]
        assert stats == {"now": 3, "max": 3, "total": 4}
    finally:
        for ws in sockets:
            ws.close()


def test_malformed_messages_and_unknown_tokens_get_error_frames_and_the_connection_lives(kite_sim):
    ws = connect(kite_sim, "k_misc")
    try:
        for message in ("not json", '{"a": "dance"}', '{"a": "subscribe", "v": "738561"}',
                        '{"a": "mode", "v": ["turbo", [738561]]}', "[1, 2]"):
            ws.send(message)
            assert "Invalid" in json.loads(receive_until(ws, is_error_frame))["data"]
        send(ws, "subscribe", [738561, 1])
        assert "Unknown instrument tokens" in json.loads(receive_until(ws, is_error_frame))["data"]
        (tick,) = protocol.parse_frame(receive_until(ws, is_tick_frame))
        assert tick["instrument_token"] == 738561 and tick["mode"] == "quote"
        send(ws, "mode", ["ltp", [738561]])
        assert protocol.parse_frame(receive_until(ws, is_tick_frame))[0]["mode"] == "ltp"
        send(ws, "unsubscribe", [738561])
        wait_until(lambda: open_connections(kite_sim, "k_misc") == 1)
    finally:
        ws.close()


def test_plain_websocket_gets_a_heartbeat_about_every_second(kite_sim):
    ws = connect(kite_sim, "k_misc")
    try:
        start = time.monotonic()
        heartbeats = 0
        while time.monotonic() - start < 2.6:
            opcode, data = ws.recv_data()
            heartbeats += data == protocol.HEARTBEAT
        assert 2 <= heartbeats <= 4
    finally:
        ws.close()


# -- operator controls -----------------------------------------------------------------------------


def test_drop_aborts_connections_of_that_key_only(kite_sim):
    dropped, other = connect(kite_sim, "k_drop"), connect(kite_sim, "k_misc")
    try:
        send(dropped, "subscribe", [738561])
        receive_until(dropped, is_tick_frame)
        assert kite_sim.post("/_sim/drop", api_key="k_drop").json()["data"]["connections"] == 1
        with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
            receive_until(dropped, lambda opcode, data: False)
        receive_until(other, lambda opcode, data: data == protocol.HEARTBEAT)  # still alive
    finally:
        dropped.close()
        other.close()


def test_stall_silences_everything_then_the_feed_resumes(kite_sim):
    ws = connect(kite_sim, "k_stall")
    try:
        send(ws, "subscribe", [738561])
        receive_until(ws, is_tick_frame)
        assert kite_sim.post("/_sim/stall", seconds=1.5, api_key="k_stall").json()["data"]["connections"] == 1
        stalled_at = time.monotonic()
        ws.ping()  # no pong either: the socket looks dead
        late = []  # frames after any already in flight when the stall began
        ws.settimeout(0.3)
        while time.monotonic() - stalled_at < 1.2:
            try:
                frame = ws.recv_data(control_frame=True)
            except websocket.WebSocketTimeoutException:
                continue
            if time.monotonic() - stalled_at > 0.2:
                late.append(frame)
        assert late == []
        ws.settimeout(5)
        receive_until(ws, is_tick_frame)
        assert time.monotonic() - stalled_at >= 1.3
    finally:
        ws.close()


def test_stall_with_pongs_keeps_answering_pings(kite_sim):
    ws = connect(kite_sim, "k_stall")
    try:
        kite_sim.post("/_sim/stall", seconds=1, api_key="k_stall", pongs=1)
        ws.ping(b"alive?")
        opcode, data = ws.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_PONG and data == b"alive?"
    finally:
        ws.close()


def test_expire_closes_connections_and_refuses_the_token(kite_sim):
    ws = connect(kite_sim, "k_expire")
    try:
        assert kite_sim.post("/_sim/expire", api_key="k_expire").json()["data"]["connections"] == 1
        assert "TokenException" in json.loads(receive_until(ws, is_error_frame))["data"]
        opcode, _ = ws.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE
    finally:
        ws.close()
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        connect(kite_sim, "k_expire")
    assert refused.value.status_code == 403
    with pytest.raises(TokenException):
        KiteConnect("k_expire", "t_expire", root=kite_sim.base_url).profile()
    # A fresh login gets a working token again.
    kite = KiteConnect("k_expire", root=kite_sim.base_url)
    kite.generate_session(login(kite_sim, "k_expire"), api_secret="s_expire")
    connect(kite_sim, "k_expire", kite.access_token).close()


def test_sent_and_stats_endpoints(kite_sim):
    assert kite_sim.get("/_sim/sent", token=1).json() == []
    assert kite_sim.get("/_sim/sent", token="abc").status_code == 400
    stats = kite_sim.get("/_sim/stats").json()
    assert stats["limits"] == {"max_tokens_per_connection": 3000, "max_connections_per_key": 3}
    assert stats["totals"]["heartbeats"] > 0
