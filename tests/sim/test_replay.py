"""The simulator's replay (ticker.sim.replay) of a synthetic recording, served by the real
aiohttp application on a local port to a real WebSocket client: what goes to whom, in which
mode, at what pace, after the day ends and on subscribe; and the instruments it adds."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from ticker.feed import protocol
from ticker.feed.recording import BINARY, TEXT, trading_date, write_recording
from ticker.sim.replay import ReplaySpec, parse_speed
from ticker.sim.server import build_app
from ticker.sim.state import SIM, SimConfig

START = 1_795_000_000.0  # 2026-11-19 14:16:40 IST
DAY = trading_date(START)
EQUITY = (987_654 << 8) | protocol.NSE  # no universe has these: the replay adds placeholders
INDEX = (987_655 << 8) | protocol.INDICES
ORDER = {"type": "order", "data": {"order_id": "1", "status": "COMPLETE"}}


def _full(token: int, price: int) -> bytes:
    tick = {"instrument_token": token, "last_price": price, "open": 100, "high": price + 5, "low": 90,
            "close": 100, "volume_traded": price * 10, "exchange_timestamp": int(START)}
    return protocol.encode_packet(tick, protocol.MODE_FULL)


FRAMES = [
    (START, BINARY, protocol.encode_frame([_full(EQUITY, 101), _full(INDEX, 2001)])),
    (START + 0.1, BINARY, protocol.HEARTBEAT),
    (START + 0.2, TEXT, json.dumps({"type": "error", "data": "Unknown instrument tokens ignored"}).encode()),
    (START + 0.3, TEXT, json.dumps(ORDER).encode()),
    (START + 0.6, BINARY, protocol.encode_frame([_full(EQUITY, 102)])),
    (START + 1.2, BINARY, protocol.encode_frame([_full(INDEX, 2002), _full(EQUITY, 103)])),
]
SPAN = FRAMES[-1][0] - FRAMES[0][0]


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("recordings")
    write_recording(directory / DAY / f"sim_key:0-{int(START * 1000)}-1.frames.gz", "sim_key:0", FRAMES[:4])
    # A second file of the day (another slot): merged in by receive time.
    write_recording(directory / DAY / f"sim_key:1-{int(START * 1000)}-2.frames.gz", "sim_key:1", FRAMES[4:])
    write_recording(directory / DAY / "other:0-1-3.frames.gz", "other:0",
                    [(START + 0.4, TEXT, json.dumps({**ORDER, "data": {"order_id": "2"}}).encode())])
    return directory


async def _session(recording: Path, speed: float | None, loop: bool, scenario) -> tuple:
    app = build_app(SimConfig(seed=3, replay=ReplaySpec(str(recording), None, speed, loop)))
    async with TestServer(app, port=0) as server, aiohttp.ClientSession() as http:
        url = server.make_url("/").with_query(api_key="sim_key", access_token="sim_access_token")
        async with http.ws_connect(url) as ws:
            return await scenario(ws, app, http, server)


async def _collect(ws, until, frames: int = 0, timeout: float = 10) -> list[tuple[float, bytes | str]]:
    """Messages but heartbeats, with their arrival times, until `until()` and a short quiet,
    or until `frames` binary frames came."""
    got: list[tuple[float, bytes | str]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if frames and sum(isinstance(data, bytes) for _, data in got) >= frames:
            return got
        try:
            message = await ws.receive(timeout=0.3)
        except TimeoutError:
            if until():
                return got
            continue
        if message.type == aiohttp.WSMsgType.BINARY and len(message.data) > 1:
            got.append((time.monotonic(), message.data))
        elif message.type == aiohttp.WSMsgType.TEXT:
            got.append((time.monotonic(), message.data))
    raise AssertionError(f"timed out; got {len(got)} messages: {got[:10]}")


def _packets(messages) -> list[list[bytes]]:
    return [protocol.split_frame(data) for _, data in messages if isinstance(data, bytes)]


def test_each_connection_gets_its_tokens_in_its_mode_in_recorded_order_and_pace(recording):
    async def scenario(ws, app, http, server):
        await ws.send_str(json.dumps({"a": "subscribe", "v": [EQUITY, INDEX]}))
        await ws.send_str(json.dumps({"a": "mode", "v": ["ltp", [EQUITY]]}))  # the index stays in quote
        return await _collect(ws, lambda: app[SIM].replay.state == "ended"), app[SIM].replay.report()

    messages, report = asyncio.run(_session(recording, 2.0, False, scenario))
    assert _packets(messages) == [[_full(EQUITY, 101)[:8], _full(INDEX, 2001)[:28]], [_full(EQUITY, 102)[:8]],
                                  [_full(INDEX, 2002)[:28], _full(EQUITY, 103)[:8]]]
    texts = [json.loads(data) for _, data in messages if isinstance(data, str)]
    assert texts == [ORDER]  # the recorded error frame is not replayed; the other key's order goes to it alone
    binary = [at for at, data in messages if isinstance(data, bytes)]
    assert binary[-1] - binary[0] >= 0.9 * SPAN / 2.0  # recorded gaps, twice as fast
    assert report["plays"] == 1 and report["state"] == "ended"


def test_a_looped_day_plays_again(recording):
    async def scenario(ws, app, http, server):
        await ws.send_str(json.dumps({"a": "subscribe", "v": [EQUITY]}))
        await ws.send_str(json.dumps({"a": "mode", "v": ["full", [EQUITY]]}))
        return await _collect(ws, lambda: False, frames=7)

    once = [[_full(EQUITY, 101)], [_full(EQUITY, 102)], [_full(EQUITY, 103)]]
    assert _packets(asyncio.run(_session(recording, None, True, scenario)))[:7] == once + once + once[:1]


def test_after_the_day_a_subscribe_or_mode_change_resends_the_last_replayed_packet(recording):
    async def next_frame(ws) -> bytes:
        while True:
            message = await ws.receive(timeout=5)
            if message.type == aiohttp.WSMsgType.BINARY and len(message.data) > 1:
                return message.data

    async def scenario(ws, app, http, server):
        await ws.send_str(json.dumps({"a": "subscribe", "v": [EQUITY]}))
        await _collect(ws, lambda: app[SIM].replay.state == "ended")
        await ws.send_str(json.dumps({"a": "subscribe", "v": [INDEX]}))  # Kite re-sends its last cached tick
        on_subscribe = await next_frame(ws)
        await ws.send_str(json.dumps({"a": "mode", "v": ["ltp", [EQUITY]]}))
        return on_subscribe, await next_frame(ws), app[SIM].replay.report()

    on_subscribe, on_mode, report = asyncio.run(_session(recording, None, False, scenario))
    assert protocol.split_frame(on_subscribe) == [_full(INDEX, 2002)[:28]]
    assert protocol.split_frame(on_mode) == [_full(EQUITY, 103)[:8]]
    assert report["state"] == "ended" and report["plays"] == 1


def test_recorded_tokens_the_universe_lacks_are_listed_as_instruments(recording):
    async def scenario(ws, app, http, server):
        async with http.get(server.make_url("/instruments")) as response:
            return await response.text(), app[SIM].trading_date.isoformat()

    dump, trading = asyncio.run(_session(recording, None, False, scenario))
    rows = {int(row["instrument_token"]): row for row in csv.DictReader(io.StringIO(dump))}
    assert rows[EQUITY]["tradingsymbol"] == f"REPLAY{EQUITY}" and rows[EQUITY]["exchange"] == "NSE"
    assert rows[INDEX]["segment"] == "INDICES"
    assert len(rows) > 1000 and trading == DAY  # the universe of the replayed date, plus the two


def test_replay_speed_and_day():
    assert parse_speed("max") is None and parse_speed("1") == 1.0 and parse_speed("2.5") == 2.5
    for bad in ("0", "-1", "fast"):
        with pytest.raises(ValueError):
            parse_speed(bad)
    with pytest.raises(ValueError, match="no such directory"):
        ReplaySpec("/nonexistent", "2026-01-01").chosen_day()
