"""Record a day with the real stack, then replay it through a second simulator.

The session's stack records (tests/conftest.py sets RECORD_DIR): a python-socketio client
streams a few instruments in full mode and an order update goes by. The recording decodes
into exactly the ticks the client received. Then `flask sim run --replay` of that recording,
at max speed, serves the official `KiteTicker` exactly the recorded packets of the tokens it
subscribes, cut to the mode of each, in recorded order, and the recorded order update.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from itertools import chain
from pathlib import Path

import pytest
import requests
from sqlalchemy import text

from tests.support.clients import RecordingClient
from tests.support.processes import VENV_BIN, Process, free_port, port_open, wait_for
from ticker.db import engine_for
from ticker.feed import protocol
from ticker.feed.recording import BINARY, TEXT, read_day, recorded_days

pytestmark = pytest.mark.integration

SCENARIO = Path(__file__).parents[1] / "sim" / "kite_ticker_scenario.py"
TICKS_PER_TOKEN = 8  # at the session simulator's 4 ticks a second: 2 s of streaming


def _tokens(database: str) -> list[int]:
    """Two equities and an index no other test streams (the highest tokens of their segments)."""
    with engine_for(database).connect() as connection:
        equities = connection.scalars(text(
            "SELECT instrument_token FROM instruments WHERE segment = 'NSE' ORDER BY instrument_token DESC LIMIT 2"))
        index = connection.scalar(text("SELECT max(instrument_token) FROM instruments WHERE segment = 'INDICES'"))
        return [*equities, index]


def _key(tick: dict) -> str:
    """A tick's market data, comparable between the client's JSON and the recording's packets."""
    return json.dumps([tick.get(field) for field in ("instrument_token", "mode", "last_price", "volume_traded",
                                                     "exchange_timestamp", "last_trade_time", "ohlc", "depth")],
                      sort_keys=True)


def _frames(directory: Path):
    return chain.from_iterable(read_day(directory, day) for day in recorded_days(directory))


def _ticks(frame) -> list[dict]:
    """The ticks of a recorded binary frame; none for a malformed one (recorded as received)."""
    try:
        return protocol.parse_frame(frame.data) if frame.opcode == BINARY else []
    except protocol.ProtocolError:
        return []


def _text(frame) -> dict:
    return (protocol.parse_text(frame.data) or {}) if frame.opcode == TEXT else {}


def _packets(frame) -> list[bytes]:
    """The packets of a recorded binary frame but a heartbeat; none for a malformed one (the
    replay skips it)."""
    try:
        return protocol.split_frame(frame.data) if frame.opcode == BINARY and len(frame.data) > 1 else []
    except protocol.ProtocolError:
        return []


@pytest.fixture(scope="module")
def recording(stack, sim, make_token, database, tmp_path_factory):
    """Streams the tokens to a client while the shards record; returns (a copy of the
    recording taken afterwards, the tokens, the client's ticks)."""
    tokens = _tokens(database)
    client = RecordingClient().connect(stack["url"], make_token("recorder"))
    try:
        reply = client.call("subscribe", {"tokens": tokens, "mode": "full"})
        assert sorted(reply["tokens"]) == sorted(tokens), reply
        client.wait_for_ticks(tokens, 2, timeout=20)
        requests.post(f"{sim}/_sim/order", params={"api_key": "sim_key"}, timeout=5).raise_for_status()
        client.wait_for_ticks(tokens, TICKS_PER_TOKEN, timeout=20)
    finally:
        client.close()
    # The shards flush once a second; the copy reads whole records up to its last flush.
    live = Path(stack["record_dir"])
    copy = tmp_path_factory.mktemp("recording")
    wait_for(lambda: _covers(live, client.ticks()), 10, "the recording to hold the client's last ticks")
    shutil.copytree(live, copy, dirs_exist_ok=True)
    return copy, tokens, client.ticks()


def _covers(directory: Path, ticks: list[dict]) -> bool:
    recorded = {_key(t) for f in _frames(directory) for t in _ticks(f)}
    return all(_key(t) in recorded for t in ticks)


def test_the_recording_holds_every_frame_and_decodes_into_the_ticks_the_client_received(recording, stack):
    directory, tokens, received = recording
    frames = list(_frames(directory))
    assert any(f.opcode == BINARY and f.data == protocol.HEARTBEAT for f in frames)  # heartbeats too
    assert any(_text(f).get("type") == "order" for f in frames)
    assert all(f.slot.startswith("sim_key:") for f in frames)
    assert [f.received for f in frames] == sorted(f.received for f in frames)
    recorded = [t for f in frames for t in _ticks(f)]
    for token in tokens:
        mine = [_key(t) for t in received if t["instrument_token"] == token]
        theirs = [_key(t) for t in recorded if t["instrument_token"] == token and t["mode"] == "full"]
        assert len(mine) >= TICKS_PER_TOKEN
        # The client's ticks are a stretch of the recorded ones: none missing, none added, same order.
        starts = [i for i, key in enumerate(theirs) if key == mine[0]]
        assert any(theirs[i:i + len(mine)] == mine for i in starts), (token, len(mine), len(theirs))
    slots = requests.get(f"{stack['url']}/health", timeout=10).json()["checks"]["shards"]["slots"]
    assert {s["recorder"]["state"] for s in slots.values() if "recorder" in s} == {"recording"}, slots


def _replay_sim(directory: Path, service_env: dict, workdir: Path) -> tuple[Process, str]:
    port = free_port()
    day = recorded_days(directory)[-1]
    process = Process("replay-sim", [str(VENV_BIN / "flask"), "--app", "ticker", "sim", "run", "--port", str(port),
                                     "--seed", "7", "--replay", str(directory), "--replay-day", day,
                                     "--replay-speed", "max"], service_env, workdir)
    wait_for(lambda: port_open(port) or not process.alive(), 60, "the replaying simulator to listen")
    assert process.alive(), process.output()
    return process, f"127.0.0.1:{port}"


def test_a_replay_serves_kite_ticker_exactly_the_recorded_packets_in_its_modes(recording, service_env, workdir):
    directory, tokens, _ = recording
    modes = {tokens[0]: "full", tokens[1]: "ltp", tokens[2]: "quote"}  # the index, cut from 32 to 28 bytes
    process, address = _replay_sim(directory, service_env, workdir)
    try:
        about = requests.get(f"http://{address}/", timeout=10).json()
        assert about["replay"]["state"] == "waiting" and about["replay"]["speed"] == "max", about
        run = subprocess.run([sys.executable, str(SCENARIO), "replay", f"ws://{address}", "sim_key",
                              "sim_access_token", json.dumps({str(t): m for t, m in modes.items()})],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        result = json.loads(run.stdout)
        about = requests.get(f"http://{address}/", timeout=10).json()
    finally:
        process.stop()
    assert about["replay"]["state"] == "ended" and about["replay"]["plays"] == 1, about
    frames = list(_frames(directory))
    expected = [[protocol.cut_packet(p, modes[protocol.packet_token(p)]) for p in _packets(f)
                 if protocol.packet_token(p) in modes] for f in frames]
    got = [protocol.split_frame(bytes.fromhex(frame)) for frame in result["frames"]]
    assert got == [packets for packets in expected if packets]
    # Full packets cut to LTP (8) and index full ones to quote (28); the quote packets (44) Kite
    # sent the recording shard before its mode message went out as they are.
    assert {8, 28, 184} <= {len(p) for packets in got for p in packets} <= {8, 28, 44, 184}
    orders = [_text(f)["data"] for f in frames if _text(f).get("type") == "order"]
    assert result["orders"] == orders and orders
    assert not result["errors"], result
