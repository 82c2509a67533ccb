"""Kite's REST root for the trading-day run: the simulator's, except the instruments dump,
which is the day's (yesterday's, then after 08:00 today's with some instruments renumbered).

Every other request (login, `/session/token`, `/user/profile`, …) is forwarded to the
simulator as it came, so the service talks to one Kite REST root by configuration alone.

The next day's dump renumbers instruments the only way the simulator can still stream them:
each takes the token (and exchange token) of another instrument of the universe that leaves
the dump. For the service that is a renumbering (`NSE:X` moves to a new token) and a listing
gone from the dump, which is what Kite's morning dump does to it.
"""

from __future__ import annotations

import csv
import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

FORWARD_TIMEOUT_SECS = 30  # the simulator answers at once; a slow answer is its own fault
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


def renumbered_dump(dump: str, moves: dict[str, str]) -> tuple[bytes, dict[int, int]]:
    """`dump` with each instrument named by a key of `moves` ("NSE:SYMBOL") given the tokens
    of the instrument named by its value, which leaves the dump; returns the new dump and
    old token -> new token."""
    rows = list(csv.reader(io.StringIO(dump)))
    header, body = rows[0], rows[1:]
    by_name = {f"{row[11]}:{row[2]}": row for row in body}
    renumbered = {}
    for name, donor_name in moves.items():
        row, donor = by_name[name], by_name[donor_name]
        renumbered[int(row[0])] = int(donor[0])
        row[0], row[1] = donor[0], donor[1]
        body.remove(donor)
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([header, *body])
    return out.getvalue().encode(), renumbered


class KiteFront:
    """An HTTP server on 127.0.0.1 (a free port) in a thread: `/instruments` answers `dump`,
    anything else is forwarded to `upstream` (the simulator's root URL)."""

    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.dump = requests.get(f"{self.upstream}/instruments", timeout=FORWARD_TIMEOUT_SECS).content
        self.served = 0  # dumps served
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, name="kite-front", daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        front = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self._answer()

            def do_HEAD(self):
                self._answer()

            def do_POST(self):
                self._answer()

            def do_PUT(self):
                self._answer()

            def do_DELETE(self):
                self._answer()

            def _answer(self):
                if self.path.split("?")[0] == "/instruments":
                    front.served += self.command == "GET"
                    self._reply(200, {"Content-Type": "text/csv"}, front.dump)
                else:
                    self._forward()

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS | {"host"}}
                reply = requests.request(self.command, front.upstream + self.path, headers=headers,
                                         data=self.rfile.read(length) if length else None,
                                         allow_redirects=False, timeout=FORWARD_TIMEOUT_SECS)
                kept = {k: v for k, v in reply.headers.items() if k.lower() not in HOP_HEADERS}
                self._reply(reply.status_code, kept, reply.content)

            def _reply(self, status: int, headers: dict[str, str], body: bytes):
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def log_message(self, *args):
                pass

        return Handler
