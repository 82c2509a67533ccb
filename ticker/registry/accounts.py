"""Kite accounts: API keys whose ticker connections the service owns, secrets encrypted at rest.

The one place that reads or writes an account's secrets. Every function takes a SQLAlchemy
Session and commits its own change. After any change to an account's access token a notice
(the api_key) goes out on `keys.ACCOUNTS_CHANGED`, so running shards pick up the new token.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ticker.bus import keys
from ticker.bus.connection import redis_client
from ticker.config import Config
from ticker.registry import secrets
from ticker.registry.models import KiteAccount

log = logging.getLogger(__name__)


class AccountError(LookupError):
    """An unknown API key, or one added twice."""


@dataclass(frozen=True)
class AccountCredentials:
    """What a shard needs to connect with an account (decrypted; never log it)."""

    api_key: str
    api_secret: str
    access_token: str | None
    token_valid: bool
    token_updated_at: datetime | None

    def __repr__(self) -> str:  # keeps secrets out of logs and tracebacks
        return f"AccountCredentials(api_key={self.api_key!r}, token_valid={self.token_valid})"


def _now() -> datetime:
    return datetime.now(UTC)


def get_account(session: Session, api_key: str) -> KiteAccount:
    """The account row for `api_key`; AccountError if there is none."""
    account = session.scalar(select(KiteAccount).where(KiteAccount.api_key == api_key))
    if account is None:
        raise AccountError(f"no Kite account with api_key {api_key!r}")
    return account


def notify_changed(client: redis.Redis | None, api_key: str) -> None:
    """Tell running shards that `api_key`'s token changed. The only publisher of ACCOUNTS_CHANGED.

    Without a client, the configured REDIS_URL's (pub/sub channels span every database number)."""
    try:
        (client or redis_client(Config.REDIS_URL)).publish(keys.ACCOUNTS_CHANGED, api_key)
    except redis.RedisError as exc:  # the change is committed; shards also re-read on reconnect
        log.warning("could not announce the token change of api_key %s: %s", api_key, exc)


def add_account(session: Session, api_key: str, api_secret: str, access_token: str | None = None,
                notify: redis.Redis | None = None) -> KiteAccount:
    """Store a new account; with `access_token`, that token counts as valid until checked."""
    if not api_key or not api_secret:
        raise ValueError("api_key and api_secret are required")
    if session.scalar(select(KiteAccount.id).where(KiteAccount.api_key == api_key)) is not None:
        raise AccountError(f"a Kite account with api_key {api_key!r} exists already")
    account = KiteAccount(api_key=api_key, api_secret_encrypted=secrets.encrypt(api_secret), enabled=True,
                          token_valid=False)
    if access_token:
        _set_token(account, access_token, None, None)
    session.add(account)
    session.commit()
    if access_token:
        notify_changed(notify, api_key)
    return account


def remove_account(session: Session, api_key: str, notify: redis.Redis | None = None) -> None:
    """Delete the account; its shards stop using it on the change notice."""
    session.delete(get_account(session, api_key))
    session.commit()
    notify_changed(notify, api_key)


def _set_token(account: KiteAccount, access_token: str, refresh_token: str | None,
               expires_at: datetime | None) -> None:
    account.access_token_encrypted = secrets.encrypt(access_token)
    if refresh_token:
        account.refresh_token_encrypted = secrets.encrypt(refresh_token)
    account.token_valid = True
    account.token_invalid_reason = None
    account.token_updated_at = account.token_checked_at = _now()
    account.token_expires_at = expires_at


def store_access_token(session: Session, api_key: str, access_token: str, refresh_token: str | None = None,
                       expires_at: datetime | None = None, notify: redis.Redis | None = None) -> KiteAccount:
    """Store a fresh access token (and refresh token, if Kite gave one) as valid."""
    account = get_account(session, api_key)
    _set_token(account, access_token, refresh_token, expires_at)
    session.commit()
    notify_changed(notify, api_key)
    log.info("stored a new access token for api_key %s", api_key)
    return account


def mark_token_invalid(session: Session, api_key: str, reason: str, notify: redis.Redis | None = None) -> None:
    """Record that Kite rejected the account's token (shards stop retrying with it)."""
    account = get_account(session, api_key)
    was_valid = account.token_valid
    account.token_valid = False
    account.token_invalid_reason = reason
    account.token_checked_at = _now()
    session.commit()
    if was_valid:
        notify_changed(notify, api_key)
        log.warning("access token of api_key %s marked invalid: %s", api_key, reason)


def mark_token_checked(session: Session, api_key: str) -> None:
    """Record a successful validation of the account's token."""
    get_account(session, api_key).token_checked_at = _now()
    session.commit()


def credentials(account: KiteAccount) -> AccountCredentials:
    """The decrypted credentials of an account row."""
    token = account.access_token_encrypted
    return AccountCredentials(
        api_key=account.api_key,
        api_secret=secrets.decrypt(account.api_secret_encrypted),
        access_token=secrets.decrypt(token) if token else None,
        token_valid=account.token_valid,
        token_updated_at=account.token_updated_at,
    )


def account_credentials(session: Session, api_key: str) -> AccountCredentials:
    """One account's decrypted credentials; AccountError if unknown."""
    return credentials(get_account(session, api_key))


def refresh_token(session: Session, api_key: str) -> str | None:
    """The account's decrypted refresh token, if Kite issued one."""
    stored = get_account(session, api_key).refresh_token_encrypted
    return secrets.decrypt(stored) if stored else None


def active_accounts(session: Session) -> list[AccountCredentials]:
    """Every enabled account, decrypted, in the order they were added."""
    rows = session.scalars(select(KiteAccount).where(KiteAccount.enabled).order_by(KiteAccount.id))
    return [credentials(row) for row in rows]


def account_summaries(session: Session) -> list[dict[str, Any]]:
    """What operators may see of each account: no secret, no token."""
    rows = session.scalars(select(KiteAccount).order_by(KiteAccount.id))
    return [
        {
            "api_key": row.api_key,
            "enabled": row.enabled,
            "has_token": row.access_token_encrypted is not None,
            "has_refresh_token": row.refresh_token_encrypted is not None,
            "token_valid": row.token_valid,
            "token_updated_at": row.token_updated_at,
            "token_expires_at": row.token_expires_at,
            "token_checked_at": row.token_checked_at,
            "token_invalid_reason": row.token_invalid_reason,
        }
        for row in rows
    ]


def ensure_config_account(session: Session, config: Any) -> KiteAccount | None:
    """Insert the configured account (KITE_API_KEY/SECRET/ACCESS_TOKEN: the simulator's by
    default) when there is none, so a local run needs no manual step. Returns it if inserted."""
    if session.scalar(select(func.count()).select_from(KiteAccount)):
        return None
    api_key, api_secret = config["KITE_API_KEY"], config["KITE_API_SECRET"]
    if not (api_key and api_secret):
        return None
    log.info("no Kite accounts stored: adding the configured api_key %s", api_key)
    return add_account(session, api_key, api_secret, config.get("KITE_ACCESS_TOKEN") or None)


def login_url(login_root: str, api_key: str, redirect_params: str) -> str:
    """Kite's login page for `api_key` (KiteConnect.login_url, but against a configurable host
    so the simulator's login page works too); Kite appends `redirect_params` (a query string,
    ticker.registry.login_state) to its redirect to the callback."""
    query = urlencode({"api_key": api_key, "v": 3, "redirect_params": redirect_params})
    return f"{login_root.rstrip('/')}/connect/login?{query}"
