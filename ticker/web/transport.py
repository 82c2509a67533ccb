"""The WebSocket transport under Socket.IO: what the WSGI servers (eventlet, gevent with
simple-websocket) would otherwise negotiate on their own."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]


def without_compression(app: WSGIApp) -> WSGIApp:
    """Hide the client's `Sec-WebSocket-Extensions` offer, so no connection negotiates
    permessage-deflate. Browsers always offer it; both servers accept it, and then deflate
    every frame for every client separately and keep a zlib state per connection, which cost
    more CPU than all of the rest of the delivery path (BENCHMARKS.md, Fan-out)."""

    def middleware(environ: dict, start_response: Callable) -> Any:
        environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
        return app(environ, start_response)

    return middleware
