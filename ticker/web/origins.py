"""Which browser origins may open a Socket.IO connection (docs/API.md, "Origins").

A browser always sends `Origin`; other clients send none, or their server's own URL
(websocket-client, which python-socketio's WebSocket transport uses, sends `http://<host>` for a
`ws://<host>` URL). So:

- no `Origin`: not a browser; let through (the JWT is still required);
- the request's own origin (`scheme://Host`; behind `TRUSTED_PROXY_COUNT` proxies, the
  `X-Forwarded-Proto`/`X-Forwarded-Host` the farthest trusted one set): let through;
- an origin listed in `CORS_ALLOWED_ORIGINS` (or any, when the list holds `*`): let through;
- any other: refused at connect with `origin_not_allowed`.

An empty list (production's default) therefore means same origin only: it fails closed.

python-engineio (4.15.1) refuses a foreign origin itself, before any handler runs, with a bare
400 "Not an accepted origin." that no client library surfaces. `OriginGate` hides a refused
`Origin` from it instead and records it in the environ, so the Socket.IO connect handler
refuses the connection with a `connect_error` carrying `{code, message}`, over both transports
and with every client library. Engine.IO still gets the policy (`OriginPolicy.allows`, its
`cors_allowed_origins` callable) for its CORS headers: only allowed origins get
`Access-Control-Allow-Origin`, so a page of a refused origin cannot read a polling reply.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from werkzeug.http import parse_list_header

REFUSED_ORIGIN = "ticker.refused_origin"  # environ key: the Origin the gate hid from Engine.IO

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]


def request_origin(environ: Mapping[str, Any], trusted_proxies: int) -> str:
    """`scheme://host[:port]` of the request as its client addressed it. Behind
    `trusted_proxies` proxies, the scheme and host the farthest trusted one forwarded (the Nth
    entry from the right of `X-Forwarded-Proto`/`X-Forwarded-Host`, as werkzeug's ProxyFix
    reads them); with none, the headers are never read: anyone can set them."""
    scheme = environ.get("wsgi.url_scheme") or "http"
    host = environ.get("HTTP_HOST") or ""
    if trusted_proxies > 0:
        scheme = _forwarded(environ.get("HTTP_X_FORWARDED_PROTO"), trusted_proxies) or scheme
        host = _forwarded(environ.get("HTTP_X_FORWARDED_HOST"), trusted_proxies) or host
    return f"{scheme.lower()}://{host.lower()}"


def _forwarded(header: str | None, trusted_proxies: int) -> str | None:
    values = parse_list_header(header or "")
    if len(values) < trusted_proxies:
        return None
    return values[-trusted_proxies].strip() or None


class OriginPolicy:
    """`allowed`: the configured origins (`*` for any); `trusted_proxies`: TRUSTED_PROXY_COUNT."""

    def __init__(self, allowed: Iterable[str], trusted_proxies: int):
        allowed = [origin.rstrip("/").lower() for origin in allowed]
        self.any = "*" in allowed
        self.allowed = frozenset(allowed)
        self.trusted_proxies = trusted_proxies

    def allows(self, origin: str | None, environ: Mapping[str, Any]) -> bool:
        """Whether a request from `origin` (its `Origin` header, None when absent) may connect."""
        if not origin:
            return True
        origin = origin.rstrip("/").lower()
        return self.any or origin in self.allowed or origin == request_origin(environ, self.trusted_proxies)


class OriginGate:
    """WSGI middleware in front of the Socket.IO endpoint (`path`): a request whose Origin the
    policy refuses reaches Engine.IO without it, and with `environ[REFUSED_ORIGIN]` set for the
    connect handler to refuse (see the module's docstring)."""

    def __init__(self, app: WSGIApp, policy: OriginPolicy, path: str = "/socket.io"):
        self.app = app
        self.policy = policy
        self.path = "/" + path.strip("/")

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        origin = environ.get("HTTP_ORIGIN")
        if origin and environ.get("PATH_INFO", "").startswith(self.path) and not self.policy.allows(origin, environ):
            environ[REFUSED_ORIGIN] = environ.pop("HTTP_ORIGIN")
        return self.app(environ, start_response)


def refused_origin(environ: Mapping[str, Any]) -> str | None:
    """The Origin a connection came from, if the policy refused it."""
    return environ.get(REFUSED_ORIGIN)
