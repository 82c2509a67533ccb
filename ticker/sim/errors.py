"""Kite's JSON envelope: `{"status": "success", "data": ...}` and its error form."""

from __future__ import annotations

from typing import Any

from aiohttp import web


class KiteError(Exception):
    """An error Kite would answer with: HTTP status, `error_type` (an exception name in
    `kiteconnect.exceptions`, which the client raises) and a message."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message

    def response(self) -> web.Response:
        """The error as Kite's JSON error envelope."""
        return error_response(self.status, self.error_type, self.message)


def token_error(message: str = "Incorrect `api_key` or `access_token`.") -> KiteError:
    """403 TokenException: a bad, expired or invalidated token (kiteconnect raises TokenException)."""
    return KiteError(403, "TokenException", message)


def input_error(message: str) -> KiteError:
    """400 InputException: a missing or malformed parameter."""
    return KiteError(400, "InputException", message)


def success_response(data: Any) -> web.Response:
    """`{"status": "success", "data": data}`."""
    return web.json_response({"status": "success", "data": data})


def error_response(status: int, error_type: str, message: str) -> web.Response:
    """`{"status": "error", "error_type": ..., "message": ...}` with the HTTP status."""
    body = {"status": "error", "error_type": error_type, "message": message, "data": None}
    return web.json_response(body, status=status)
