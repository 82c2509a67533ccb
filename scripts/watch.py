"""Watch live ticks from a running service: a small python-socketio client.

    .venv/bin/python scripts/watch.py --instruments NSE:INFY NSE:RELIANCE --mode ltp

Without --token it mints a development token with the local key (a local run only).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import timedelta
from pathlib import Path

import socketio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def dev_token() -> str:
    from ticker import create_app
    from ticker.web.auth import mint

    app = create_app()
    with app.app_context():
        return mint("watcher", timedelta(hours=1))


def refusal_of(data) -> dict:
    """The `{code, message}` of a `connect_error` the server sent; {} when no server answered
    (python-socketio then passes a bare string such as "Connection error")."""
    if not isinstance(data, dict):
        return {}
    return data["data"] if isinstance(data.get("data"), dict) else data


def refused(refusal: dict, url: str) -> str:
    """Why the connection failed, in one line: the server's refusal, or no server at all."""
    if refusal:
        return f"refused: {refusal.get('code', 'connect_failed')}: {refusal.get('message', '')}"
    return f"cannot connect to {url}: is the service running?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:5000")
    parser.add_argument("--token", help="a JWT (default: mint a development one)")
    parser.add_argument("--instruments", nargs="*", default=["NSE:INFY"], help='"EXCHANGE:TRADINGSYMBOL" names')
    parser.add_argument("--tokens", nargs="*", type=int, default=[], help="instrument tokens")
    parser.add_argument("--mode", default="quote", choices=["ltp", "quote", "full"])
    parser.add_argument("--seconds", type=float, default=0, help="stop after this long (0: run until Ctrl-C)")
    args = parser.parse_args()

    sio = socketio.Client()
    sio.on("connected", lambda data: print("connected:", data))
    sio.on("subscribed", lambda data: print("subscribed:", data))
    sio.on("error", lambda data: print("error:", data))
    refusal: dict = {}  # the server's {code, message}, when it refused the connection
    sio.on("connect_error", lambda data: refusal.update(refusal_of(data)))

    @sio.on("ticks")
    def on_ticks(ticks):
        now_ms = time.time() * 1000
        for tick in ticks:
            lag = now_ms - tick["ingest_ts"]
            print(f"{tick['instrument_token']:>10} {tick['last_price']:>12} seq={tick['seq']:<6} lag={lag:.0f}ms")

    try:
        sio.connect(args.url, auth={"token": args.token or dev_token()}, transports=["websocket"])
    except socketio.exceptions.ConnectionError:
        sys.exit(refused(refusal, args.url))  # one line on stderr, exit status 1
    sio.emit("subscribe", {"tokens": args.tokens, "instruments": args.instruments, "mode": args.mode})
    try:
        sio.sleep(args.seconds) if args.seconds else sio.wait()
    except KeyboardInterrupt:
        pass
    sio.disconnect()


if __name__ == "__main__":
    main()
