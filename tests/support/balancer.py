"""A TCP load balancer in front of web replicas: round robin, skipping replicas that refuse.

Each new client connection goes to the next backend in turn; a backend that refuses the
connection (a replica that died, or is restarting) is skipped for this connection and the next
one is tried, so clients that reconnect after their replica died land on a live one. There is
no stickiness: Socket.IO clients that connect with `transports=["websocket"]` need none (README,
"Scaling out"). It is `TcpProxy` with a choice of target, so the same controls work on it.

Run it as a process of its own, so its traffic never competes with the test's:

    python -m tests.support.balancer --port 8080 127.0.0.1:5001 127.0.0.1:5002
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import threading

from tests.support.proxy import TcpProxy

CONNECT_TIMEOUT_SECS = 2.0  # a backend that accepts nothing within this is taken for dead


class TcpBalancer(TcpProxy):
    """Listens on 127.0.0.1:`port` and spreads connections over `backends` (host, port) pairs."""

    def __init__(self, backends: list[tuple[str, int]], port: int = 0):
        super().__init__(backends[0], port)
        self.backends = backends
        self.refused = 0  # connection attempts a backend refused (each one skipped)
        self._turn = itertools.cycle(range(len(backends)))

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        first = next(self._turn)
        for n in range(len(self.backends)):
            backend = self.backends[(first + n) % len(self.backends)]
            try:
                return await asyncio.wait_for(asyncio.open_connection(*backend), CONNECT_TIMEOUT_SECS)
            except (TimeoutError, OSError):
                self.refused += 1
        raise ConnectionRefusedError("no backend accepted the connection")


def _address(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


def main() -> None:
    """Serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("backends", nargs="+", type=_address, metavar="HOST:PORT")
    args = parser.parse_args()
    balancer = TcpBalancer(args.backends, args.port).start()
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    print(f"balancing 127.0.0.1:{balancer.port} over {args.backends}", flush=True)
    done.wait()
    balancer.stop()


if __name__ == "__main__":
    main()
