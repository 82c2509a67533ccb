"""What the client does about each code the service sends (docs/API.md), and its backoff. Pure logic.

Codes arrive three ways: a refused connect (`connect_error` data `{code, message}`), an `error`
event on an open connection, and per-token rejections in `subscribed.rejected`.
"""

from __future__ import annotations

import base64
import json
import random
import time

# Refusals of the JWT itself: retrying with the same token cannot help; a token provider may.
TOKEN_REFUSALS = frozenset({
    "auth_required", "token_too_large", "token_expired", "token_not_yet_valid", "token_exp_required",
    "token_invalid", "token_wrong_audience", "token_wrong_issuer", "token_entitlements_invalid",
})
# Refusals no retry mends: the page's origin, or the user holding all its connections is
# retried too, since another of the user's connections may close.
FATAL_CONNECT_CODES = frozenset({"origin_not_allowed"})
# Codes after which the server closes the connection; the client reconnects.
CLOSING_CODES = frozenset({"slow_consumer", "connection_max_age", "token_expired"})
# A request refused for now (nothing changed): send it again after a backoff.
RETRY_REQUEST_CODES = frozenset({"server_busy", "bus_unavailable", "database_unavailable", "rate_limited",
                                 "internal_error"})
# Per-token rejections after which the token is dropped from the subscriptions.
DROP_TOKEN_CODES = frozenset({"unknown_token", "unknown_instrument", "not_entitled", "limit_exceeded",
                              "capacity_exhausted"})
# `unsubscribed.reason`s: the server stopped the subscription; resubscribing would be refused.
SERVER_UNSUBSCRIBE_REASONS = frozenset({"capacity_exhausted", "not_entitled", "instrument_removed",
                                        "instrument_renumbered"})

FIRST_DELAY_SECS = 0.5  # the first retry comes quickly: most drops are a replica restarting
MIN_MAX_DELAY_SECS = 5  # as kiteconnect.KiteTicker: `reconnect_max_delay` is at least this
MAX_MAX_TRIES = 300  # as kiteconnect.KiteTicker: `reconnect_max_tries` is at most this
REAUTH_MARGIN_SECS = 60  # renew the JWT this long before its `exp` (or at 80% of a shorter life)


def connect_refusal_is_final(code: str | None, has_token_provider: bool) -> bool:
    """Whether a connect refused with `code` should stop the reconnect loop (`on_noreconnect`)."""
    if code in FATAL_CONNECT_CODES:
        return True
    return code in TOKEN_REFUSALS and not has_token_provider


def backoff_delay(attempt: int, max_delay: float, rng: random.Random = random._inst) -> float:
    """Seconds to wait before reconnect `attempt` (1, 2, …): exponential from `FIRST_DELAY_SECS`,
    capped at `max_delay`, with full jitter over the upper half so a crowd of clients dropped at
    once does not return at once."""
    ceiling = min(max_delay, FIRST_DELAY_SECS * 2 ** (attempt - 1))
    return ceiling / 2 + rng.random() * ceiling / 2


def jwt_expiry(token: str) -> float | None:
    """The `exp` claim of a JWT (epoch seconds), read without verifying it (the server does),
    or None when the token has none or is not a JWT."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims.get("exp")
    except (IndexError, ValueError, AttributeError):
        return None
    return float(exp) if isinstance(exp, (int, float)) else None


def reauth_delay(token: str, now: float | None = None) -> float | None:
    """Seconds from now until a fresh JWT should be sent for `token`, or None when it never expires:
    `REAUTH_MARGIN_SECS` before its `exp`, or at 80% of the life left when that margin would eat
    more than a fifth of it (a 5-minute token is renewed after 4 minutes, a 5-second one after 4
    seconds). 0 for a token already expired. Never 0 for a token with life left, so a provider of
    short-lived tokens does not make the client renew in a loop."""
    exp = jwt_expiry(token)
    if exp is None:
        return None
    now = time.time() if now is None else now
    life = exp - now
    return max(0.0, life - REAUTH_MARGIN_SECS, life * 0.8)
