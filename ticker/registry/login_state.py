"""The single-use `state` that binds a Kite login to whoever started it.

Kite's login redirect carries a `request_token` for the API key's app; nothing in it says who
asked for the login. So each login URL the service hands out carries a random state, kept in
Redis for `LOGIN_STATE_TTL_SECS` with the starter (an admin JWT's `sub`, or `cli:` for the
`flask accounts login-url` command) and the api_key; the callback takes it back (GETDEL: it
works once) and completes the login only if it exists and names the same api_key.

Kite hands the state back through `redirect_params`: "a query string (key=value&...) that will
be sent back to the redirect URL" on a successful login (Kite Connect v3 docs, User: "Login
flow", https://kite.trade/docs/connect/v3/user/#login-flow).
"""

from __future__ import annotations

import json
import secrets
from urllib.parse import urlencode

import redis

from ticker.bus import keys

LOGIN_STATE_TTL_SECS = 600  # a person logging in at Kite (password, 2FA) takes minutes, not more
STATE_PARAM = "state"


def _key(state: str) -> str:
    return f"{keys.PREFIX}:kite_login_state:{state}"


def issue(client: redis.Redis, started_by: str, api_key: str) -> str:
    """A new state for a login of `api_key` that `started_by` begins; valid for the TTL, once."""
    state = secrets.token_urlsafe(32)
    client.set(_key(state), json.dumps({"started_by": started_by, "api_key": api_key}), ex=LOGIN_STATE_TTL_SECS)
    return state


def consume(client: redis.Redis, state: str, api_key: str) -> str | None:
    """Take `state` back (it never works twice): who started the login, or None when the state is
    missing, unknown, used, expired, or was issued for another api_key."""
    if not state or len(state) > 200:
        return None
    stored = client.getdel(_key(state))
    if stored is None:
        return None
    login = json.loads(stored)
    return login["started_by"] if login["api_key"] == api_key else None


def redirect_params(state: str) -> str:
    """The value of the login URL's `redirect_params` that brings `state` back to the callback."""
    return urlencode({STATE_PARAM: state})
