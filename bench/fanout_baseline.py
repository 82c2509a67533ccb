"""The straightforward design, for bench/fanout.py to compare against: a worker that reads every
tick batch and emits each tick to its room through Flask-SocketIO's message queue (a write-only
`SocketIO(message_queue=...)`), which every web replica then receives and emits to its room's
members. Run with the web replicas' tick delivery off (WEB_TICK_DELIVERY=off).

    REDIS_URL=... python -m bench.fanout_baseline --mode quote
"""

from __future__ import annotations

import argparse

from flask_socketio import SocketIO

from ticker.bus import keys
from ticker.bus.connection import redis_client
from ticker.bus.ticks import decode_batch, project
from ticker.config import Config
from ticker.web.rooms import room_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", default="quote", help="the mode every benchmark client subscribes in")
    mode = parser.parse_args().mode
    emitter = SocketIO(message_queue=Config.REDIS_URL, channel=keys.SOCKETIO_CHANNEL)
    pubsub = redis_client(Config.REDIS_URL).pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(*(keys.tick_channel(bucket) for bucket in range(keys.TICK_BUCKETS)))
    print("baseline emitter listening", flush=True)
    for message in pubsub.listen():
        for tick in decode_batch(message["data"]):
            projected = project(tick, mode)
            if projected is not None:
                emitter.emit("ticks", [projected], to=room_for(tick["instrument_token"], mode))


if __name__ == "__main__":
    main()
