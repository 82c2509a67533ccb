"""Runs one `kiteconnect.KiteTicker` scenario against the simulator and prints JSON results.

Twisted's reactor runs once per process and cannot be restarted, so each scenario runs in its
own process: `python kite_ticker_scenario.py SCENARIO WS_ROOT API_KEY ACCESS_TOKEN [TOKENS_JSON]`.

- `ticks`: subscribe to TOKENS (quote mode by default), then switch them to ltp, then full,
  then ask the simulator for an order update; prints the ticks (timestamps as ISO strings in
  IST), heartbeat count and callbacks seen.
- `bad-token`: connect with a bad access token; prints which callbacks fired.
- `replay`: subscribe to MODES_JSON's tokens (`{"token": mode}`) and set their modes, then
  print every binary frame but heartbeats (hex) and order update received until nothing has
  come for QUIET_SECS after the first frame (a replay at max speed).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import requests
from kiteconnect import KiteTicker
from twisted.internet import reactor

IST = timezone(timedelta(hours=5, minutes=30))
PHASE_SECS = 1.3  # long enough for a few ticks at the test's tick rate


def jsonable(tick: dict) -> dict:
    """KiteTicker's naive local datetimes as ISO strings in IST (what parse_frame gives)."""
    return {k: v.astimezone(IST).isoformat() if isinstance(v, datetime) else v
            for k, v in tick.items()}


def run_ticks(ws_root: str, api_key: str, access_token: str, tokens: list[int]) -> dict:
    result: dict = {"ticks": [], "heartbeats": 0, "connects": 0, "errors": [], "closes": [],
                    "orders": []}
    connected = threading.Event()
    order_seen = threading.Event()
    kws = KiteTicker(api_key, access_token, root=ws_root)

    def on_connect(ws, response):
        result["connects"] += 1
        ws.subscribe(tokens)
        connected.set()

    def on_message(ws, payload, is_binary):
        if is_binary and len(payload) == 1:
            result["heartbeats"] += 1

    def on_order_update(ws, data):
        result["orders"].append(data)
        order_seen.set()

    kws.on_connect = on_connect
    kws.on_message = on_message
    kws.on_ticks = lambda ws, ticks: result["ticks"].extend(jsonable(t) for t in ticks)
    kws.on_error = lambda ws, code, reason: result["errors"].append([code, str(reason)])
    kws.on_close = lambda ws, code, reason: result["closes"].append([code, str(reason)])
    kws.on_order_update = on_order_update
    kws.connect(threaded=True)
    if not connected.wait(10):
        return result
    time.sleep(PHASE_SECS)  # quote mode, the default
    for mode in (kws.MODE_LTP, kws.MODE_FULL):
        # Twisted is not thread-safe: calls from this thread go through the reactor.
        reactor.callFromThread(kws.set_mode, mode, tokens)
        time.sleep(PHASE_SECS)
    http_root = ws_root.replace("ws", "http", 1)
    requests.post(f"{http_root}/_sim/order", params={"api_key": api_key}, timeout=5)
    order_seen.wait(5)
    reactor.callFromThread(kws.close)
    return result


QUIET_SECS = 2.0


def run_replay(ws_root: str, api_key: str, access_token: str, modes: dict[str, str]) -> dict:
    result: dict = {"frames": [], "orders": [], "errors": [], "closes": []}
    last = [0.0]
    kws = KiteTicker(api_key, access_token, root=ws_root)

    def on_connect(ws, response):
        tokens = [int(t) for t in modes]
        ws.subscribe(tokens)
        for mode in set(modes.values()):
            ws.set_mode(mode, [int(t) for t, m in modes.items() if m == mode])

    def on_message(ws, payload, is_binary):
        if is_binary and len(payload) > 1:
            result["frames"].append(payload.hex())
            last[0] = time.monotonic()

    def on_order_update(ws, data):
        result["orders"].append(data)
        last[0] = time.monotonic()

    kws.on_connect = on_connect
    kws.on_message = on_message
    kws.on_order_update = on_order_update
    kws.on_error = lambda ws, code, reason: result["errors"].append([code, str(reason)])
    kws.on_close = lambda ws, code, reason: result["closes"].append([code, str(reason)])
    kws.connect(threaded=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (last[0] and time.monotonic() - last[0] > QUIET_SECS):
        time.sleep(0.1)
    reactor.callFromThread(kws.close)
    return result


def run_bad_token(ws_root: str, api_key: str, access_token: str) -> dict:
    result: dict = {"connects": 0, "errors": [], "closes": []}
    closed = threading.Event()
    kws = KiteTicker(api_key, access_token, root=ws_root)

    def on_close(ws, code, reason):
        result["closes"].append([code, str(reason)])
        ws.stop_retry()
        closed.set()

    kws.on_connect = lambda ws, response: result.__setitem__("connects", result["connects"] + 1)
    kws.on_error = lambda ws, code, reason: result["errors"].append([code, str(reason)])
    kws.on_close = on_close
    kws.connect(threaded=True)
    closed.wait(10)
    return result


def main(argv: list[str]) -> None:
    scenario, ws_root, api_key, access_token, *rest = argv
    if scenario == "ticks":
        result = run_ticks(ws_root, api_key, access_token, json.loads(rest[0]))
    elif scenario == "replay":
        result = run_replay(ws_root, api_key, access_token, json.loads(rest[0]))
    else:
        result = run_bad_token(ws_root, api_key, access_token)
    sys.stdout.write(json.dumps(result))
    sys.stdout.flush()
    os._exit(0)  # the reactor thread never stops on its own; nothing else is left to do


if __name__ == "__main__":
    main(sys.argv[1:])
