"""Endpoints in Kite Connect's REST shapes, so the official `kiteconnect.KiteConnect` works
against this service unchanged (quotes today; historical candles can reuse it).

Authentication: this service's JWT (ticker.web.auth.verify), sent either as
`Authorization: Bearer <jwt>` or as Kite's own `Authorization: token <api_key>:<access_token>`
with the JWT as the access token. The api_key part is not checked (any value, even empty): the
JWT alone says who the user is, and the platform, not Kite, issued it. So

    kite = KiteConnect(api_key="any", root="https://ticker.example")
    kite.set_access_token(jwt)

authenticates as the JWT's `sub`, with its entitlements (ticker.web.entitlements).

Envelopes (https://kite.trade/docs/connect/v3/exceptions/): success is
`{"status": "success", "data": ...}`; an error is
`{"status": "error", "message", "error_type", "data": null, "code"}`, where `error_type` is the
name of the kiteconnect exception the official client raises (`TokenException`,
`InputException`, `PermissionException`, `NetworkException`, `GeneralException`, ...) and
`code` is this service's stable code (docs/API.md), which Kite's clients ignore. A refused JWT
answers 403 `TokenException` as Kite does for a bad access token (kiteconnect then calls its
`session_expiry_hook`), or 503 `NetworkException` `auth_unavailable` when the server cannot
verify tokens at all. A user over MAX_REST_REQUESTS_PER_USER_PER_SEC is answered 429
`NetworkException` `rate_limited` with `Retry-After: 1`, as Kite answers its own rate limits.
Every error is counted in `ticker_http_errors_total{reason=code}`.

Use: decorate a view of a blueprint with `@kite_endpoint`; it gets the verified claims and
returns the `data` of the success envelope, or raises KiteError. Redis and database failures
raised inside become Kite's envelope too (503 `bus_unavailable`, `server_busy`,
`database_unavailable`), never the service's plain `{code, message}`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import wraps
from typing import Any

import orjson
import redis
import sqlalchemy.exc
from flask import Response, current_app, jsonify, request

from ticker.bus.connection import PoolExhausted
from ticker.logs import event
from ticker.metrics import HTTP_ERRORS
from ticker.web import auth, errors
from ticker.web.errors import ClientError
from ticker.web.http_errors import BUSY_RETRY_AFTER_SECS, DATABASE_DOWN, DOWN_RETRY_AFTER_SECS

log = logging.getLogger(__name__)

# kiteconnect.exceptions class names (the `error_type` the official client raises by name).
TOKEN_EXCEPTION = "TokenException"
INPUT_EXCEPTION = "InputException"
PERMISSION_EXCEPTION = "PermissionException"
NETWORK_EXCEPTION = "NetworkException"
GENERAL_EXCEPTION = "GeneralException"

# A client polling quotes sends the same JWT many times a second, and verifying it (RS256, and
# PyJWT's checks of every character) was the largest single cost of a small quote: a token
# verified is taken as verified for this long (never past its `exp`). A JWKS key withdrawn
# is thus refused up to this much later; the key set is refetched at most once a second anyway.
VERIFIED_REUSE_SECS = 1.0
MAX_VERIFIED = 10_000  # distinct tokens remembered; all forgotten at once beyond it
_verified: dict[tuple[int, str], tuple[dict[str, Any], float]] = {}


class KiteError(Exception):
    """An error answered in Kite's envelope: HTTP `status`, Kite's `error_type`, this
    service's stable `code`, and a `message` for people. `headers` go on the response."""

    def __init__(self, status: int, error_type: str, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.code = code
        self.message = message
        self.headers = headers or {}

    def envelope(self) -> dict[str, Any]:
        """Kite's error body: `{"status": "error", "message", "data": null, "error_type", "code"}`."""
        return {"status": "error", "message": self.message, "data": None, "error_type": self.error_type,
                "code": self.code}


def success(data: Any) -> Response:
    """Kite's success envelope around `data`."""
    return jsonify({"status": "success", "data": data})


def error_response(exc: KiteError) -> Response:
    """Kite's error envelope for `exc`, counted in ticker_http_errors_total."""
    response = jsonify(exc.envelope())
    response.status_code = exc.status
    response.headers.update(exc.headers)
    HTTP_ERRORS.labels(exc.code).inc()
    return response


def request_line_too_long(http_version: str) -> bytes:
    """The raw HTTP response the server itself sends for a request line longer than it reads
    (`ticker.web.kite_quotes.MAX_REQUEST_LINE_BYTES`), before any route: 414 with Kite's error
    envelope (`InputException`: KiteConnect raises that rather than failing to parse an empty
    body), which holds this service's `{code, message}` too. Not counted: no route runs."""
    body = orjson.dumps(KiteError(414, INPUT_EXCEPTION, errors.REQUEST_TOO_LARGE,
                                  "the request line is too long: name fewer instruments per request").envelope())
    head = (f"{http_version} 414 Request URI Too Long\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def credentials(headers: Any) -> str | None:
    """The JWT of `Authorization: Bearer <jwt>` or `Authorization: token <api_key>:<jwt>`
    (split at the last colon: a JWT has none), or None when neither is there."""
    scheme, _, value = headers.get("Authorization", "").strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "token" and ":" in value:
        return value.rpartition(":")[2] or None
    return auth.bearer_token(None, {}, headers)


def authenticate(headers: Any) -> dict[str, Any]:
    """The verified claims of the request's JWT; KiteError 403 `TokenException` (or 503
    `NetworkException` for `auth_unavailable`) with the code of docs/API.md otherwise."""
    try:
        return _verify(credentials(headers))
    except ClientError as exc:
        if exc.code == errors.AUTH_UNAVAILABLE:
            raise KiteError(503, NETWORK_EXCEPTION, exc.code, exc.message,
                            {"Retry-After": str(DOWN_RETRY_AFTER_SECS)}) from exc
        message = exc.message
        if exc.code == errors.AUTH_REQUIRED:
            message = "a JWT is required: Authorization: token <api_key>:<jwt>, or Authorization: Bearer <jwt>"
        raise KiteError(403, TOKEN_EXCEPTION, exc.code, message) from exc


def _verify(token: str | None) -> dict[str, Any]:
    """auth.verify, reusing a verification of the same token for VERIFIED_REUSE_SECS."""
    key = (id(current_app._get_current_object()), token or "")
    now = time.monotonic()
    reused = _verified.get(key)
    if reused is not None and reused[1] > now and not _expired(reused[0]):
        return reused[0]
    claims = auth.verify(token)
    if len(_verified) >= MAX_VERIFIED:
        _verified.clear()
    _verified[key] = (claims, now + VERIFIED_REUSE_SECS)
    return claims


def _expired(claims: dict[str, Any]) -> bool:
    exp = claims.get("exp")
    return isinstance(exp, int | float) and time.time() > exp + current_app.config["JWT_DECODE_LEEWAY"]


def dependency_error(exc: Exception) -> KiteError | None:
    """The Kite envelope's error for a failed dependency (Redis or PostgreSQL down, or their
    pools busy), None for anything else (a bug)."""
    if isinstance(exc, PoolExhausted | redis.exceptions.MaxConnectionsError | sqlalchemy.exc.TimeoutError):
        return KiteError(503, NETWORK_EXCEPTION, errors.SERVER_BUSY, "the server is busy; retry shortly",
                         {"Retry-After": str(BUSY_RETRY_AFTER_SECS)})
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return KiteError(503, NETWORK_EXCEPTION, errors.BUS_UNAVAILABLE, "the message bus is unavailable; retry later",
                         {"Retry-After": str(DOWN_RETRY_AFTER_SECS)})
    if isinstance(exc, DATABASE_DOWN):
        return KiteError(503, NETWORK_EXCEPTION, errors.DATABASE_UNAVAILABLE,
                         "the database is unavailable; retry later", {"Retry-After": str(DOWN_RETRY_AFTER_SECS)})
    return None


def _count_request(user: str) -> None:
    """Count a request of `user` against MAX_REST_REQUESTS_PER_USER_PER_SEC on this replica
    (a one-second window, ticker.web.limits.AttemptWindow); KiteError 429 `NetworkException`
    `rate_limited` beyond it, as Kite answers its own rate limits (kiteconnect raises
    NetworkException). Counted here, not in Redis: a round trip would add a third to a small
    quote's CPU (BENCHMARKS.md, "Market quotes"), and a user's requests from one address stay
    on one replica behind the documented proxy (ip_hash)."""
    from ticker.web.replica import replica  # the replica imports the blueprints using this module

    if not replica().rest_requests.allow(user):
        limit = current_app.config["MAX_REST_REQUESTS_PER_USER_PER_SEC"]
        raise KiteError(429, NETWORK_EXCEPTION, errors.RATE_LIMITED,
                        f"too many requests: at most {limit} a second per user", {"Retry-After": "1"})


def kite_endpoint(view: Callable[..., Any]) -> Callable[..., Response]:
    """A view answering in Kite's envelopes: called as `view(claims, **kwargs)` with the
    verified JWT claims; what it returns is the success envelope's `data`, unless it returns a
    Response of its own; a KiteError it raises is the error envelope, and so is a failed
    dependency (see `dependency_error`). A bug is 500 `GeneralException` `internal_error`,
    logged with its traceback."""

    @wraps(view)
    def handle(**kwargs: Any) -> Response:
        try:
            claims = authenticate(request.headers)
            _count_request(str(claims.get("sub")))
            result = view(claims, **kwargs)
            return result if isinstance(result, Response) else success(result)
        except KiteError as exc:
            return error_response(exc)
        except Exception as exc:  # noqa: BLE001  (every failure answers in Kite's envelope)
            failed = dependency_error(exc)
            if failed is None:
                log.exception("%s %s failed", request.method, request.path)
                failed = KiteError(500, GENERAL_EXCEPTION, errors.INTERNAL, "the server could not handle this request")
            else:
                event(log, "http_dependency_failed", logging.WARNING, code=failed.code, method=request.method,
                      path=request.path, error=f"{type(exc).__name__}: {str(exc).strip()[:300]}")
            return error_response(failed)

    handle.kite_envelope = True  # type: ignore[attr-defined]  (ticker.web.http_errors.refuse_nul leaves it be)
    return handle
