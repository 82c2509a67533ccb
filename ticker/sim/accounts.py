"""Simulated Kite Connect accounts: the login flow, sessions and token validity. No I/O.

Each account is an API key with its secret. The login flow is Kite's: `/connect/login` issues a
single-use request token, `POST /session/token` exchanges it (with checksum
sha256(api_key + request_token + api_secret)) for an access token and a refresh token, and
`POST /session/refresh_token` renews with sha256(api_key + refresh_token + api_secret).
An account given with an access token (`KEY:SECRET:ACCESS_TOKEN`) has that token valid from
start, so local runs need no login. Tokens die when invalidated, when the operator expires the
key (`/_sim/expire`), or at the optional daily expiry time (Kite: around 06:00 IST).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any

from ticker.sim.errors import input_error, token_error
from ticker.sim.universe import IST


@dataclass(frozen=True)
class AccountSpec:
    """An API key, its secret, and optionally an access token valid from start."""

    api_key: str
    api_secret: str
    access_token: str | None = None


DEFAULT_ACCOUNT = AccountSpec("sim_key", "sim_secret", "sim_access_token")


def parse_account(spec: str) -> AccountSpec:
    """Parse `KEY:SECRET[:ACCESS_TOKEN]` (the `--account` flag)."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"account {spec!r} is not KEY:SECRET[:ACCESS_TOKEN]")
    return AccountSpec(*parts)


def checksum(api_key: str, token: str, api_secret: str) -> str:
    """Kite's checksum: hex sha256 of api_key + token + api_secret."""
    return hashlib.sha256((api_key + token + api_secret).encode()).hexdigest()


@dataclass
class Account:
    """One API key's state: outstanding request tokens, live access and refresh tokens."""

    spec: AccountSpec
    user_id: str
    request_tokens: set[str] = field(default_factory=set)
    access_tokens: dict[str, float | None] = field(default_factory=dict)  # token -> expires at
    refresh_tokens: set[str] = field(default_factory=set)


class AccountStore:
    """All accounts; raises KiteError the way Kite's REST API answers."""

    def __init__(self, specs: Iterable[AccountSpec], daily_expiry: time | None = None) -> None:
        self._daily_expiry = daily_expiry
        self._accounts: dict[str, Account] = {}
        for number, spec in enumerate(specs, start=1):
            account = Account(spec, user_id=f"SIM{number:03d}")
            if spec.access_token:
                account.access_tokens[spec.access_token] = None  # valid until expired by hand
            self._accounts[spec.api_key] = account

    @property
    def api_keys(self) -> list[str]:
        """The configured API keys."""
        return list(self._accounts)

    def account(self, api_key: str) -> Account:
        """The account for an API key; InputException if unknown."""
        account = self._accounts.get(api_key)
        if account is None:
            raise input_error("Invalid `api_key`.")
        return account

    def is_valid(self, api_key: str, access_token: str, now: float) -> bool:
        """Whether the access token is live for this API key right now."""
        account = self._accounts.get(api_key)
        if account is None or access_token not in account.access_tokens:
            return False
        expires_at = account.access_tokens[access_token]
        return expires_at is None or now < expires_at

    def authenticate(self, authorization: str, now: float) -> Account:
        """Check an `Authorization: token api_key:access_token` header; TokenException if bad."""
        scheme, _, credentials = authorization.partition(" ")
        api_key, _, access_token = credentials.partition(":")
        if scheme.lower() != "token" or not self.is_valid(api_key, access_token, now):
            raise token_error()
        return self._accounts[api_key]

    def issue_request_token(self, api_key: str) -> str:
        """A single-use request token, as the login redirect carries it."""
        token = secrets.token_hex(16)
        self.account(api_key).request_tokens.add(token)
        return token

    def create_session(self, api_key: str, request_token: str, given_checksum: str,
                       now: float) -> dict[str, Any]:
        """Exchange a request token (once) for a session, as `POST /session/token` does."""
        account = self.account(api_key)
        self._check_checksum(account, request_token, given_checksum)
        if request_token not in account.request_tokens:
            raise token_error("Token is invalid or has expired.")
        account.request_tokens.discard(request_token)
        refresh_token = secrets.token_hex(16)
        account.refresh_tokens.add(refresh_token)
        return self._new_session(account, refresh_token, now)

    def renew(self, api_key: str, refresh_token: str, given_checksum: str,
              now: float) -> dict[str, Any]:
        """A new access token for a live refresh token (`POST /session/refresh_token`)."""
        account = self.account(api_key)
        self._check_checksum(account, refresh_token, given_checksum)
        if refresh_token not in account.refresh_tokens:
            raise token_error("Token is invalid or has expired.")
        return self._new_session(account, refresh_token, now)

    def invalidate(self, api_key: str, access_token: str = "", refresh_token: str = "") -> None:
        """Kill an access or refresh token (`DELETE /session/token`)."""
        account = self.account(api_key)
        account.access_tokens.pop(access_token, None)
        account.refresh_tokens.discard(refresh_token)

    def expire(self, api_key: str) -> None:
        """Invalidate every access token of the key, as Kite's morning expiry does."""
        self.account(api_key).access_tokens.clear()

    def profile(self, account: Account) -> dict[str, Any]:
        """`GET /user/profile` data."""
        number = account.user_id[3:]
        return {
            "user_id": account.user_id,
            "user_type": "individual",
            "email": f"{account.user_id.lower()}@example.com",
            "user_name": f"Sim User {number}",
            "user_shortname": f"Sim{number}",
            "broker": "ZERODHA",
            "exchanges": ["NSE", "BSE", "NFO", "BFO", "CDS", "BCD", "MCX"],
            "products": ["CNC", "NRML", "MIS", "BO", "CO"],
            "order_types": ["MARKET", "LIMIT", "SL", "SL-M"],
            "avatar_url": None,
            "meta": {"demat_consent": "physical"},
        }

    def _check_checksum(self, account: Account, token: str, given: str) -> None:
        expected = checksum(account.spec.api_key, token, account.spec.api_secret)
        if not hmac.compare_digest(expected, given or ""):
            raise input_error("Invalid `checksum`.")

    def _new_session(self, account: Account, refresh_token: str, now: float) -> dict[str, Any]:
        access_token = secrets.token_hex(16)
        account.access_tokens[access_token] = self._expiry_after(now)
        login_time = datetime.fromtimestamp(now, IST).strftime("%Y-%m-%d %H:%M:%S")
        return {
            **self.profile(account),
            "api_key": account.spec.api_key,
            "access_token": access_token,
            "public_token": secrets.token_hex(16),
            "refresh_token": refresh_token,
            "enctoken": secrets.token_urlsafe(24),
            "login_time": login_time,
        }

    def _expiry_after(self, now: float) -> float | None:
        """The next daily expiry (IST wall clock) after `now`, or None if tokens don't expire."""
        if self._daily_expiry is None:
            return None
        issued = datetime.fromtimestamp(now, IST)
        expiry = datetime.combine(issued.date(), self._daily_expiry, tzinfo=IST)
        if expiry <= issued:
            expiry += timedelta(days=1)
        return expiry.timestamp()

