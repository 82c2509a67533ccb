"""The one place that turns what an HTTP request raised into a JSON error.

Every HTTP error has the shape `{"code", "message"}` (docs/API.md, "HTTP errors"). Endpoints
that answer their own errors (401 `auth_required`, 403 `admin_required`, 400 `bad_request`, ...)
keep them; what they raise lands here:

- a werkzeug HTTPException (an unknown path, a wrong method, a body too large): its status,
  `not_found`, `method_not_allowed`, ... (`HTTP_CODES`, else the status's name in snake case);
- PostgreSQL unreachable, or not answering within the statement bound (ticker.db): 503
  `database_unavailable`; no pooled connection free in time: 503 `server_busy`;
- Redis unreachable: 503 `bus_unavailable`; no connection free in the Redis pool: 503
  `server_busy`;
- anything else is a bug: 500 `internal_error`, logged with its traceback, its details kept
  from the client.

Before any endpoint runs, a request whose path or query holds a NUL character is answered 400
`bad_request`: PostgreSQL cannot store or compare one, and no name, symbol or key has one.

A 503 carries `Retry-After`. Each error is counted in `ticker_http_errors_total{reason=code}`.
"""

from __future__ import annotations

import logging
import re

import psycopg2
import redis
import sqlalchemy.exc
from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from ticker.bus.connection import PoolExhausted
from ticker.logs import event
from ticker.metrics import HTTP_ERRORS
from ticker.web import errors

log = logging.getLogger(__name__)

HTTP_CODES = {
    400: errors.BAD_REQUEST,
    401: errors.AUTH_REQUIRED,
    404: errors.NOT_FOUND,
    405: errors.METHOD_NOT_ALLOWED,
    413: errors.REQUEST_TOO_LARGE,
    429: errors.RATE_LIMITED,
}


BUSY_RETRY_AFTER_SECS = 1  # a full pool frees up as soon as requests in flight finish
DOWN_RETRY_AFTER_SECS = 5  # a restarted PostgreSQL or Redis takes seconds to come back

DATABASE_DOWN = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, psycopg2.OperationalError,
                 psycopg2.InterfaceError)


def register(app: Flask) -> None:
    """Install the handlers on `app` (create_app does)."""
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(sqlalchemy.exc.TimeoutError, database_pool_exhausted)
    for exc_class in DATABASE_DOWN:
        app.register_error_handler(exc_class, database_unavailable)
    app.register_error_handler(redis.ConnectionError, bus_unavailable)
    app.register_error_handler(redis.TimeoutError, bus_unavailable)
    app.register_error_handler(Exception, internal_error)
    app.before_request(refuse_nul)


def refuse_nul() -> Response | None:
    """400 `bad_request` for a NUL in the path or the query (see the module's docstring);
    views that answer in Kite's envelope (ticker.web.kite_rest) refuse it themselves, in it."""
    view = current_app.view_functions.get(request.endpoint) if request.endpoint else None
    if getattr(view, "kite_envelope", False):
        return None
    # The raw query holds a NUL exactly when its decoded keys or values do (only `%00` decodes
    # to one), and reading it spares every request the parse of its arguments.
    query = request.query_string.lower()
    if "\x00" in request.path or b"%00" in query or b"\x00" in query:
        return error_response(400, errors.BAD_REQUEST, "a NUL character is not accepted in a path or query")
    return None


def error_response(status: int, code: str, message: str, retry_after: int | None = None) -> Response:
    """`{"code", "message"}` with `status` (and `Retry-After`, when given); counted."""
    response = jsonify({"code": code, "message": message})
    response.status_code = status
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    HTTP_ERRORS.labels(code).inc()
    return response


def http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    response = error_response(status, HTTP_CODES.get(status) or _snake(exc.name), exc.description or exc.name)
    for name, value in exc.get_headers():  # e.g. a 405's Allow
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def database_pool_exhausted(exc: Exception) -> Response:
    _dependency_failed(errors.SERVER_BUSY, exc)
    return error_response(503, errors.SERVER_BUSY, "the server is busy; retry shortly", BUSY_RETRY_AFTER_SECS)


def database_unavailable(exc: Exception) -> Response:
    _dependency_failed(errors.DATABASE_UNAVAILABLE, exc)
    return error_response(503, errors.DATABASE_UNAVAILABLE, "the database is unavailable; retry later",
                          DOWN_RETRY_AFTER_SECS)


def bus_unavailable(exc: Exception) -> Response:
    if isinstance(exc, PoolExhausted | redis.exceptions.MaxConnectionsError):
        _dependency_failed(errors.SERVER_BUSY, exc)
        return error_response(503, errors.SERVER_BUSY, "the server is busy; retry shortly", BUSY_RETRY_AFTER_SECS)
    _dependency_failed(errors.BUS_UNAVAILABLE, exc)
    return error_response(503, errors.BUS_UNAVAILABLE, "the message bus is unavailable; retry later",
                          DOWN_RETRY_AFTER_SECS)


def internal_error(exc: Exception) -> Response:
    log.exception("%s %s failed", request.method, request.path)
    return error_response(500, errors.INTERNAL, "the server could not handle this request")


def _dependency_failed(code: str, exc: Exception) -> None:
    event(log, "http_dependency_failed", logging.WARNING, code=code, method=request.method, path=request.path,
          error=f"{type(exc).__name__}: {str(exc).strip()[:300]}")


def _snake(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
