"""The browser's own Socket.IO library (socket.io-client 4, run by Node) speaks the protocol."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.web.webproc import tokens_of

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "tests" / "js" / "client.mjs"


def run_js(*args: str, script: Path = CLIENT) -> dict:
    """Run a Node script of tests/js with `args`; returns the JSON of its last line of output."""
    if shutil.which("node") is None or not (ROOT / "node_modules" / "socket.io-client").exists():
        pytest.fail("Node and socket.io-client are needed: run `make install` (npm ci)")
    done = subprocess.run(["node", str(script), *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr + done.stdout
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_socket_io_client_connects_subscribes_and_streams(stack, make_token, database):
    tokens = tokens_of(database, "NSE", 2, skip=300)
    seen = run_js(stack["url"], make_token("browser"), json.dumps({"tokens": tokens, "mode": "quote"}), "3")

    assert seen["connected"]["user"] == "browser"
    assert seen["subscribed"] == {"tokens": tokens, "mode": "quote", "total": 2, "rejected": []}
    for token in tokens:
        ticks = [t for t in seen["ticks"] if t["instrument_token"] == token]
        assert len(ticks) >= 3 and all(t["mode"] == "quote" and "ohlc" in t and "depth" not in t for t in ticks)
        assert [t["seq"] for t in ticks] == sorted({t["seq"] for t in ticks})
    assert "+05:30" in seen["pong"]["server_time"]


def test_socket_io_client_sees_the_refusal_code(stack):
    seen = run_js(stack["url"], "not.a.jwt", json.dumps({"tokens": [1]}), "1")
    assert seen["connect_error"]["data"]["code"] == "token_invalid"
    assert seen["connect_error"]["message"] == seen["connect_error"]["data"]["message"]


def test_socket_io_client_sees_not_entitled_per_token_and_no_data_of_it(stack, make_token, database):
    nse, nfo = tokens_of(database, "NSE", 1, skip=310), tokens_of(database, "NFO-FUT", 1)
    token = make_token("browser-nse", exchanges=["NSE"])
    seen = run_js(stack["url"], token, json.dumps({"tokens": nse + nfo, "mode": "ltp"}), "2")

    assert seen["subscribed"]["tokens"] == nse
    assert [(r["token"], r["code"]) for r in seen["subscribed"]["rejected"]] == [(nfo[0], "not_entitled")]
    assert {t["instrument_token"] for t in seen["ticks"]} == set(nse)
