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
    sio.on("connect_error", lambda data: print("refused:", data))

    @sio.on("ticks")
    def on_ticks(ticks):
        now_ms = time.time() * 1000
        for tick in ticks:
            lag = now_ms - tick["ingest_ts"]
            print(f"{tick['instrument_token']:>10} {tick['last_price']:>12} seq={tick['seq']:<6} lag={lag:.0f}ms")

    sio.connect(args.url, auth={"token": args.token or dev_token()}, transports=["websocket"])
    sio.emit("subscribe", {"tokens": args.tokens, "instruments": args.instruments, "mode": args.mode})
    try:
        sio.sleep(args.seconds) if args.seconds else sio.wait()
    except KeyboardInterrupt:
        pass
    sio.disconnect()


if __name__ == "__main__":
    main()
