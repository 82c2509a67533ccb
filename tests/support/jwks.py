"""A JWKS endpoint a test controls: which keys it publishes, how it answers, and a count of
the requests it got."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.processes import wait_for


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(kid: str, key: rsa.RSAPrivateKey) -> dict[str, Any]:
    jwk = json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}


class JwksServer:
    """Serves `{"keys": [...]}` at `/jwks.json` from a thread of the test process.

    `mode`: "ok" (the keys), "error" (HTTP 500), "garbage" (200 with a body that is no JSON),
    "slow" (the keys after `slow_secs`). `max_age` sets `Cache-Control: max-age`."""

    def __init__(self) -> None:
        self.keys: dict[str, rsa.RSAPrivateKey] = {}
        self.mode = "ok"
        self.max_age: int | None = None
        self.slow_secs = 10.0
        self.hits = 0
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def publish(self, **keys: rsa.RSAPrivateKey) -> None:
        """Publish exactly these keys (kid=key), answering normally."""
        self.keys = dict(keys)
        self.mode = "ok"

    def count(self) -> int:
        with self.lock:
            return self.hits

    def wait_for_hits(self, more_than: int, timeout: float = 10) -> int:
        return wait_for(lambda: self.count() > more_than and self.count(), timeout, "a JWKS fetch")

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802  (http.server's name)
                with server.lock:
                    server.hits += 1
                mode = server.mode
                if mode == "slow":
                    time.sleep(server.slow_secs)
                if mode == "error":
                    self._answer(500, b"upstream trouble")
                elif mode == "garbage":
                    self._answer(200, b"<html>not a key set</html>")
                else:
                    keys = [public_jwk(kid, key) for kid, key in server.keys.items()]
                    self._answer(200, json.dumps({"keys": keys}).encode())

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if server.max_age is not None:
                    self.send_header("Cache-Control", f"public, max-age={server.max_age}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        return Handler
