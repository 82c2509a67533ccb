"""Kite refusing an access token, in every form it takes, and how a shard makes sure of it.

The forms a refusal takes on the ticker connection:

- **HTTP 403 at the WebSocket upgrade**, body `{"status": "error", "error_type":
  "TokenException", ...}`: what Kite answers a dead or wrong token with (`KiteTicker` logs
  "WebSocket connection upgrade failed (403 - Forbidden)", zerodha/pykiteconnect#102; after
  the daily expiry the handshake keeps answering 403, marketcalls/openalgo#1387, whose
  reconnect loop spun on it until a restart). `ticker.feed.connection` raises TokenRejected.
- **A text error frame after the upgrade**, `{"type": "error", "data": "..."}`: Kite's
  WebSocket documentation lists error messages among the text messages it streams, and
  `KiteTicker._parse_text_message` (kiteconnect 5.x) hands them to `on_error(ws, 0, data)`.
  Kite names the refusal of a token `TokenException` wherever it has an error type (REST
  answers 403 with that type and kiteconnect raises `kiteconnect.exceptions.TokenException`,
  whose session-expiry hook is keyed on it: zerodha/pykiteconnect#73).
- **A close frame**: 1008, "policy violation" (RFC 6455 §7.4.1), with or without a reason.

A signal is `DEFINITE` when it names TokenException (an error frame or a close reason) or is
the 401/403 at the upgrade. It is `SUSPECT` when it may be about the token and may not: a
1008 (or 4xxx, application-defined) close without TokenException, or an error frame that
speaks of the access token, API key, session or authentication without naming
TokenException. A suspect signal is confirmed with Kite's REST `GET /user/profile` (the
official `KiteConnect.profile()`, against KITE_API_ROOT) with the same token, once the
connection has ended: `TokenException` there means refused; a profile means the token works
(an ordinary drop); anything else (no answer, a timeout, a 429 or 5xx) means unknown and is
treated as an ordinary drop, so network trouble never marks a valid account invalid.
"""

from __future__ import annotations

import enum
import logging
import re

import requests
from kiteconnect import KiteConnect
from kiteconnect.exceptions import KiteException, TokenException

log = logging.getLogger(__name__)

CONFIRM_TIMEOUT_SECS = 3.0  # one profile call; well inside a lease TTL, which nobody renews meanwhile
CLOSE_POLICY_VIOLATION = 1008

_DEFINITE = re.compile(r"TokenException")
_ABOUT_THE_TOKEN = re.compile(
    r"access[ _-]?token|api[ _-]?key|session|authenticat|authori[sz]|forbidden|\b40[13]\b|log ?in", re.I)


class Signal(enum.IntEnum):
    """How strongly something Kite sent says the token is refused (ordered: max() is strongest)."""

    NONE = 0
    SUSPECT = 1
    DEFINITE = 2


def from_error(text: str) -> Signal:
    """What an error frame's text says about the token."""
    if _DEFINITE.search(text):
        return Signal.DEFINITE
    return Signal.SUSPECT if _ABOUT_THE_TOKEN.search(text) else Signal.NONE


def from_close(code: int, reason: str) -> Signal:
    """What a close frame says about the token."""
    if _DEFINITE.search(reason):
        return Signal.DEFINITE
    if code == CLOSE_POLICY_VIOLATION or 4000 <= code <= 4999 or _ABOUT_THE_TOKEN.search(reason):
        return Signal.SUSPECT
    return Signal.NONE


def token_refused(api_root: str, api_key: str, access_token: str) -> bool | None:
    """Ask Kite's REST API whether it refuses the token: True (TokenException), False (the
    profile came back), None (no answer that says either: treat as an ordinary drop)."""
    kite = KiteConnect(api_key, access_token=access_token, root=api_root, timeout=CONFIRM_TIMEOUT_SECS)
    try:
        kite.profile()
    except TokenException:
        return True
    except (KiteException, requests.RequestException, OSError, ValueError) as exc:
        log.warning("could not confirm whether Kite refuses api_key %s's token: %s", api_key, exc)
        return None
    return False
