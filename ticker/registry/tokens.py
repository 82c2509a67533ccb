"""Kite access tokens: exchange a login's request token, validate, renew, and tell operators.

Used by the login callback (ticker.web.kite_login) and beat's token check (tasks.accounts).
Every call to Kite goes through the official `KiteConnect` client pointed at KITE_API_ROOT, so
the simulator answers in tests and local runs.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import redis
import requests
from flask_socketio import SocketIO
from kiteconnect import KiteConnect
from kiteconnect.exceptions import KiteException, NetworkException, TokenException
from sqlalchemy.orm import Session

from ticker.bus import keys
from ticker.bus.message_queue import LiveRedisManager
from ticker.registry import accounts
from ticker.registry.calendar import next_token_expiry

log = logging.getLogger(__name__)

OPERATORS_ROOM = "operators"  # Socket.IO room of operators' dashboards (admin JWTs)
ACCOUNT_EVENT = "kite_account"  # control message: an account's token state changed

UNREACHABLE = (NetworkException, requests.RequestException, OSError)


def kite(config: Any, api_key: str, access_token: str | None = None) -> KiteConnect:
    return KiteConnect(api_key, access_token=access_token, root=config["KITE_API_ROOT"], timeout=10)


@lru_cache(maxsize=4)
def _emitter(redis_url: str) -> SocketIO:
    # Write-only: this process holds no sockets, it only posts to the replicas' message queue.
    return LiveRedisManager.emitter(redis_url, keys.SOCKETIO_CHANNEL)


def announce(config: Any, state: dict[str, Any]) -> None:
    """Emit `kite_account` {api_key, token_valid, reason, expires_at} to connected operators."""
    try:
        _emitter(config["REDIS_URL"]).emit(ACCOUNT_EVENT, state, to=OPERATORS_ROOM, namespace="/")
    except (redis.RedisError, OSError) as exc:
        log.warning("could not tell operators about api_key %s: %s", state.get("api_key"), exc)


def _state(api_key: str, valid: bool, reason: str | None = None, expires_at: datetime | None = None) -> dict:
    return {"api_key": api_key, "token_valid": valid, "reason": reason,
            "expires_at": expires_at.isoformat() if expires_at else None}


def complete_login(session: Session, config: Any, notify: redis.Redis, api_key: str, request_token: str) -> dict:
    """Exchange a login's request token for an access token, check it against `profile`, store
    it encrypted. Raises KiteException if Kite refuses (the request token is single-use)."""
    creds = accounts.account_credentials(session, api_key)
    client = kite(config, api_key)
    data = client.generate_session(request_token, api_secret=creds.api_secret)
    client.set_access_token(data["access_token"])
    try:
        profile = client.profile()  # a token Kite does not accept must never be stored as valid
    except TokenException as exc:
        accounts.mark_token_invalid(session, api_key, f"{type(exc).__name__}: {exc}", notify=notify)
        raise
    expires_at = next_token_expiry(datetime.now(UTC))
    accounts.store_access_token(session, api_key, data["access_token"], data.get("refresh_token"),
                                expires_at, notify=notify)
    announce(config, _state(api_key, True, expires_at=expires_at))
    return {"api_key": api_key, "user_id": profile.get("user_id"), "expires_at": expires_at.isoformat()}


def load_provider(path: str) -> Callable[[str], str | None] | None:
    """The operator's token provider, "package.module:function" (or dotted); None if unset."""
    if not path:
        return None
    module, _, name = path.partition(":") if ":" in path else path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _renewed(session: Session, config: Any, creds: accounts.AccountCredentials) -> str | None:
    """A fresh access token from the refresh token or the operator's provider, or None."""
    refresh = accounts.refresh_token(session, creds.api_key)
    if refresh:
        try:
            data = kite(config, creds.api_key).renew_access_token(refresh, api_secret=creds.api_secret)
            accounts.store_access_token(session, creds.api_key, data["access_token"], data.get("refresh_token"),
                                        next_token_expiry(datetime.now(UTC)))
            return "renewed"
        except TokenException as exc:
            log.warning("refresh token of api_key %s refused: %s", creds.api_key, exc)
    provider = load_provider(config.get("KITE_TOKEN_PROVIDER", ""))
    token = provider(creds.api_key) if provider else None
    if token:
        kite(config, creds.api_key, token).profile()  # TokenException if the provider's is bad too
        accounts.store_access_token(session, creds.api_key, token, None, next_token_expiry(datetime.now(UTC)))
        return "provided"
    return None


def check_account(session: Session, config: Any, creds: accounts.AccountCredentials) -> str:
    """Validate one account's token, renewing it if Kite allows; returns the outcome:
    "valid", "renewed", "provided", "invalid" or "unreachable" (Kite did not answer: no change)."""
    try:
        try:
            if not creds.access_token:
                raise TokenException("no access token stored")
            kite(config, creds.api_key, creds.access_token).profile()
        except TokenException:
            outcome = _renewed(session, config, creds)
            if outcome is None:
                raise
            announce(config, _state(creds.api_key, True, expires_at=next_token_expiry(datetime.now(UTC))))
            return outcome
    except TokenException as exc:
        reason = f"{type(exc).__name__}: {exc}"
        accounts.mark_token_invalid(session, creds.api_key, reason)
        if creds.token_valid:
            announce(config, _state(creds.api_key, False, reason))
        return "invalid"
    except UNREACHABLE as exc:
        log.warning("could not validate the token of api_key %s: %s", creds.api_key, exc)
        return "unreachable"
    except KiteException as exc:  # Kite answered with something else (rate limit, input error)
        log.warning("Kite refused to validate api_key %s: %s", creds.api_key, exc)
        return "unreachable"
    if not creds.token_valid:  # a token marked invalid that Kite accepts again
        accounts.store_access_token(session, creds.api_key, creds.access_token)
        announce(config, _state(creds.api_key, True))
    else:
        accounts.mark_token_checked(session, creds.api_key)
    return "valid"


def check_all(session: Session, config: Any) -> dict[str, str]:
    """Check every enabled account; {api_key: outcome}."""
    return {creds.api_key: check_account(session, config, creds) for creds in accounts.active_accounts(session)}
