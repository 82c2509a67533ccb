"""Kite login flow over HTTP.

- `GET /kite/login/<api_key>` (admin JWT): the account's Kite login URL, carrying a single-use
  `state` bound to the admin and the api_key (ticker.registry.login_state), which Kite hands
  back to the callback through `redirect_params`.
- `GET /kite/callback/<api_key>` (or `/kite/callback`, when one account is configured or with
  `?api_key=`): where Kite redirects the browser with `request_token` after the login. Set the
  Kite app's redirect URL to it. The state is taken back first: missing, unknown, used, expired
  or issued for another api_key, the callback answers 400 `login_state_invalid` and asks Kite
  nothing. Then the request token is exchanged (`generate_session`), the new access token
  checked (`profile`) and stored encrypted; shards switch to it. Never echoes a token.
"""

from __future__ import annotations

import logging
from urllib.parse import urlencode

from flask import Blueprint, current_app, jsonify, redirect, request
from kiteconnect.exceptions import KiteException

from ticker.bus.connection import redis_client
from ticker.db import session_for
from ticker.registry import accounts, login_state
from ticker.registry.tokens import UNREACHABLE, complete_login
from ticker.web import errors
from ticker.web.auth import bearer_token, http_status, verify
from ticker.web.errors import ClientError
from ticker.web.http_errors import error_response

log = logging.getLogger(__name__)
bp = Blueprint("kite_login", __name__)

UNKNOWN_ACCOUNT = "unknown_account"  # no Kite account with that api_key
LOGIN_STATE_INVALID = "login_state_invalid"  # the callback's state is not one of a login started here
LOGIN_FAILED = "login_failed"  # Kite refused the request token (used, expired) or the login was cancelled
KITE_UNAVAILABLE = "kite_unavailable"  # Kite did not answer; try logging in again


def _error(code: str, message: str, status: int):
    return jsonify({"code": code, "message": message}), status


@bp.get("/kite/login/<api_key>")
def login_url(api_key: str):
    """The login URL of an account (an operator opens it in a browser)."""
    try:
        claims = verify(bearer_token(None, request.args, request.headers))
    except ClientError as exc:
        return _error(exc.code, exc.message, http_status(exc))
    if not claims.get("admin"):
        return _error(errors.ADMIN_REQUIRED, "an admin JWT is required", 403)
    with session_for(current_app.config["DATABASE_URL"]) as session:
        try:
            accounts.get_account(session, api_key)
        except accounts.AccountError as exc:
            return _error(UNKNOWN_ACCOUNT, str(exc), 404)
    config = current_app.config
    state = login_state.issue(redis_client(config["REDIS_URL"]), f"jwt:{claims.get('sub')}", api_key)
    url = accounts.login_url(config["KITE_LOGIN_ROOT"], api_key, login_state.redirect_params(state))
    return jsonify({"api_key": api_key, "login_url": url, "expires_in": login_state.LOGIN_STATE_TTL_SECS})


def _callback_account(session, api_key: str | None) -> str:
    if api_key:
        return accounts.get_account(session, api_key).api_key
    enabled = accounts.account_summaries(session)
    if len(enabled) != 1:
        raise accounts.AccountError("several Kite accounts: use /kite/callback/<api_key> as the redirect URL")
    return enabled[0]["api_key"]


@bp.get("/kite/callback")
@bp.get("/kite/callback/<api_key>")
def callback(api_key: str | None = None):
    """Kite's redirect after a login: exchange the request token and store the access token."""
    request_token = request.args.get("request_token", "")
    if request.args.get("status", "success") != "success" or not request_token:
        return _error(LOGIN_FAILED, "the Kite login did not succeed (no request_token)", 400)
    config = current_app.config
    with session_for(config["DATABASE_URL"]) as session:
        try:
            api_key = _callback_account(session, api_key or request.args.get("api_key"))
            bus = redis_client(config["REDIS_URL"])
            started_by = login_state.consume(bus, request.args.get(login_state.STATE_PARAM, ""), api_key)
            if started_by is None:
                log.warning("refused a Kite login callback of api_key %s: its state is missing, unknown, used, "
                            "expired or another account's", api_key)
                return error_response(400, LOGIN_STATE_INVALID, "this login callback is not one of a login started "
                                      "here, or was already used or expired: get a new login URL")
            result = complete_login(session, config, bus, api_key, request_token)
        except accounts.AccountError as exc:
            return _error(UNKNOWN_ACCOUNT, str(exc), 404)
        except UNREACHABLE as exc:
            log.warning("Kite did not answer the login of api_key %s: %s", api_key, type(exc).__name__)
            return _error(KITE_UNAVAILABLE, "Kite did not answer; log in again", 502)
        except KiteException as exc:
            log.warning("Kite refused the login of api_key %s: %s", api_key, exc)
            return _error(LOGIN_FAILED, f"Kite refused the login: {exc}", 400)
    log.info("Kite login of api_key %s (user %s, started by %s) stored; valid until %s", api_key, result["user_id"],
             started_by, result["expires_at"])
    if config.get("KITE_LOGIN_DONE_URL"):
        return redirect(f"{config['KITE_LOGIN_DONE_URL']}?{urlencode({'api_key': api_key, 'status': 'success'})}")
    return jsonify({"status": "logged_in", **result})
