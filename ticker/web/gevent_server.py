"""gevent's WSGI server as a web replica runs it: imported only under gevent."""

from __future__ import annotations

import socket

from gevent import pywsgi

from ticker.web.kite_quotes import MAX_REQUEST_LINE_BYTES
from ticker.web.kite_rest import request_line_too_long

# gevent reads its request-line (and header-line) limit from this module global at each request
# (gevent 24/25, `WSGIHandler.read_requestline`): a quote for Kite's 1000 instruments needs more
# than its 8 KiB. A longer line is still refused, with 414.
pywsgi.MAX_REQUEST_LINE = MAX_REQUEST_LINE_BYTES
# ...and answers it with this module global (gevent 26.9, `WSGIHandler.handle_one_request`):
# an empty body by default, which KiteConnect fails to parse; JSON in the service's shape instead.
pywsgi._REQUEST_TOO_LONG_RESPONSE = request_line_too_long("HTTP/1.1")

# The request line and headers are read through this buffer; gevent's default (8 KiB) then
# stays allocated for as long as a WebSocket lives on the connection.
REQUEST_BUFFER_BYTES = 1024


class WebSocketClosingHandler(pywsgi.WSGIHandler):
    """gevent's request handler, which ends the TCP connection once a WebSocket on it has closed
    (and sends without Nagle's delay).

    simple-websocket answers the upgrade on the socket itself, so gevent never sees the `101`:
    when the WebSocket ends it takes the connection for an idle keep-alive one and waits for
    another HTTP request on it. RFC 6455 (7.1.1) has the server close the TCP connection after
    the closing handshake, and clients wait for it: python-socketio's client up to 3 s in each
    `disconnect()`, browsers about 2 s before a closed socket reports `close`. eventlet's server
    closes its WebSockets itself."""

    def __init__(self, sock, address, server, rfile=None):
        # gevent writes a response's headers and its body in two sends: with Nagle's algorithm
        # on, the body waited for the client's ACK of the headers, which Linux delays 40 ms, so
        # every response on a kept-alive connection (KiteConnect's session, long-polling) took
        # 40 ms however fast it was made.
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().__init__(sock, address, server, rfile or sock.makefile("rb", REQUEST_BUFFER_BYTES))

    def handle_one_response(self) -> None:
        super().handle_one_response()
        if self.status is None and self.environ.get("HTTP_UPGRADE", "").lower() == "websocket":
            self.close_connection = True
            # simple-websocket holds a duplicate of the socket until it reads the client's end of
            # the connection, so closing this one alone would not end it: say we are done now.
            try:
                self.socket.shutdown(socket.SHUT_WR)
            except OSError:  # the client is gone already
                pass
