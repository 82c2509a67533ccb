"""Stable error codes a client can rely on (documented in docs/API.md)."""

from __future__ import annotations

AUTH_REQUIRED = "auth_required"  # no token at connect
TOKEN_EXPIRED = "token_expired"
TOKEN_INVALID = "token_invalid"  # malformed, wrongly signed, disallowed algorithm, missing claims
TOKEN_AUDIENCE = "token_wrong_audience"
TOKEN_ISSUER = "token_wrong_issuer"
TOKEN_ENTITLEMENTS_INVALID = "token_entitlements_invalid"  # the entitlements claim is not a list of strings
TOKEN_NOT_YET_VALID = "token_not_yet_valid"  # iat or nbf later than now + JWT_LEEWAY_SECS
TOKEN_EXP_REQUIRED = "token_exp_required"  # no exp claim (JWT_REQUIRE_EXP)
TOKEN_TOO_LARGE = "token_too_large"  # longer than ticker.web.auth.MAX_TOKEN_BYTES: not decoded at all
AUTH_UNAVAILABLE = "auth_unavailable"  # the JWKS keys are unavailable for too long: retry with backoff
CONNECTION_MAX_AGE = "connection_max_age"  # the connection lived MAX_CONNECTION_SECS: reconnect
BAD_REQUEST = "bad_request"  # a message of the wrong shape
REQUEST_TOO_LARGE = "request_too_large"  # an HTTP request body or request line beyond what the server reads
TOO_MANY_TOKENS = "too_many_tokens"  # one request names more tokens than allowed
CAPACITY_EXHAUSTED = "capacity_exhausted"  # every upstream Kite connection is full
LIMIT_EXCEEDED = "limit_exceeded"  # the connection already holds its maximum of tokens
UNKNOWN_TOKEN = "unknown_token"
UNKNOWN_INSTRUMENT = "unknown_instrument"
NOT_ENTITLED = "not_entitled"  # the token's entitlements do not cover this instrument's exchange
QUOTE_PENDING = "quote_pending"  # instruments subscribed on demand for a quote sent no tick within QUOTE_WAIT_SECS
UNKNOWN_EVENT = "unknown_event"
INTERNAL = "internal_error"
RATE_LIMITED = "rate_limited"  # too many messages (or connection attempts from one address) a second
TOO_MANY_CONNECTIONS = "too_many_connections"  # the user already holds its maximum of connections
SERVER_BUSY = "server_busy"  # this replica is full or overloaded: retry with backoff (or another replica)
BUS_UNAVAILABLE = "bus_unavailable"  # this replica cannot reach Redis now: retry with backoff
UPSTREAM_UNAVAILABLE = "upstream_unavailable"  # ticks for some tokens stopped; subscriptions are kept
CANDLES_UNAVAILABLE = "candles_unavailable"  # no candle builder is running: live candles stopped; subscriptions kept
# The `reason` of an `upstream_unavailable` (ticker.bus.upstream), and what the client is told.
UPSTREAM_REASONS = {
    "token_expired": "Kite refused the access token these instruments are streamed with (Kite expires tokens every "
                     "morning around 06:00 IST): ticks resume by themselves after the next login",
    "feed_down": "the Kite connection streaming these instruments dropped or went silent: reconnecting",
    "no_connection": "no Kite connection streams these instruments right now (one is being taken over): ticks "
                     "resume by themselves",
    "bus_unavailable": "this server lost its connection to the tick bus: reconnecting",
}
SLOW_CONSUMER = "slow_consumer"  # the client read too slowly for too long and was disconnected
ORIGIN_NOT_ALLOWED = "origin_not_allowed"  # a browser page of an origin not in CORS_ALLOWED_ORIGINS (at connect)
ADMIN_REQUIRED = "admin_required"  # an admin JWT is needed (GET /ws/stats)
# HTTP only (ticker.web.http_errors; docs/API.md, "HTTP errors").
NOT_FOUND = "not_found"  # no such path
METHOD_NOT_ALLOWED = "method_not_allowed"  # the path exists, not with this method
DATABASE_UNAVAILABLE = "database_unavailable"  # PostgreSQL unreachable or too slow: retry later
BUS_UNAVAILABLE = "bus_unavailable"  # Redis unreachable: retry later


class ClientError(Exception):
    """A request the client got wrong; becomes an `error` event, never a disconnect."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}
