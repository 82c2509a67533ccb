"""The Kite login round trip and token checks, against a real simulator and web replica.

This module runs a simulator of its own whose login redirects to a web replica of its own (the
redirect URL is fixed when the simulator starts), with an API key and a database (for accounts)
no other test uses, so the shared stack's shards never see these tokens.
"""

from __future__ import annotations

import re
import sys
from urllib.parse import parse_qs, urlparse

import pytest
import requests
from sqlalchemy import text

from tests.conftest import start
from tests.support.processes import free_port, port_open, wait_for
from ticker.bus import keys
from ticker.db import session_for
from ticker.registry import accounts
from ticker.registry.models import KiteAccount
from ticker.registry.tokens import check_all

pytestmark = pytest.mark.integration

API_KEY, API_SECRET = "login_test_key", "login_test_secret"


@pytest.fixture(scope="module")
def login_stack(processes, service_env, workdir, accounts_database, redis):
    """A simulator whose login redirects to a web replica; both on ports of their own."""
    sim_port, web_port = free_port(), free_port()
    sim_url, web_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{web_port}"
    env = {**service_env, "DATABASE_URL": accounts_database, "KITE_API_ROOT": sim_url, "KITE_LOGIN_ROOT": sim_url,
           "KITE_TICKER_ROOT": f"ws://127.0.0.1:{sim_port}", "PORT": str(web_port)}
    sim = start(processes, "login-sim", [
        sys.executable, "-m", "ticker.sim", "--port", str(sim_port), "--account", f"{API_KEY}:{API_SECRET}",
        "--redirect-url", f"{web_url}/kite/callback/{API_KEY}",
    ], env, workdir)
    web = start(processes, "login-web", [sys.executable, "wsgi.py"], env, workdir)
    wait_for(lambda: port_open(sim_port) and port_open(web_port), 30, "the login simulator and web replica")
    assert sim.alive() and web.alive()
    return {"sim": sim_url, "web": web_url, "web_process": web}


@pytest.fixture
def account(app, login_stack, accounts_database):
    with app.app_context(), session_for(accounts_database) as session:
        session.query(KiteAccount).filter_by(api_key=API_KEY).delete()
        session.commit()
        accounts.add_account(session, API_KEY, API_SECRET)
        yield session
        session.query(KiteAccount).filter_by(api_key=API_KEY).delete()
        session.commit()


def log_in(login_stack, make_token) -> requests.Response:
    """What an operator does: ask for the login URL, open it, let Kite redirect back."""
    admin = {"Authorization": f"Bearer {make_token('ops', admin=True)}"}
    reply = requests.get(f"{login_stack['web']}/kite/login/{API_KEY}", headers=admin, timeout=5)
    assert reply.status_code == 200, reply.text
    return requests.get(reply.json()["login_url"], timeout=15)  # follows the redirect to /kite/callback


def test_login_round_trip_stores_an_encrypted_token_that_kite_accepts(app, account, login_stack, make_token):
    reply = log_in(login_stack, make_token)

    assert reply.status_code == 200, reply.text
    assert reply.json()["status"] == "logged_in" and reply.json()["api_key"] == API_KEY
    [creds] = [c for c in accounts.active_accounts(account) if c.api_key == API_KEY]
    assert creds.token_valid and creds.access_token
    refresh = accounts.refresh_token(account, API_KEY)
    profile = requests.get(f"{login_stack['sim']}/user/profile", timeout=5,
                           headers={"Authorization": f"token {API_KEY}:{creds.access_token}"})
    assert profile.status_code == 200  # the stored token is one Kite accepts
    stored = repr(account.execute(text("SELECT * FROM kite_accounts")).all())
    for secret in (creds.access_token, refresh, API_SECRET):
        assert secret not in stored
        assert secret not in reply.text
        assert secret not in login_stack["web_process"].output()


def test_a_used_request_token_is_refused_with_a_code(app, account, login_stack, make_token):
    admin = {"Authorization": f"Bearer {make_token('ops', admin=True)}"}
    url = requests.get(f"{login_stack['web']}/kite/login/{API_KEY}", headers=admin, timeout=5).json()["login_url"]
    callback = requests.get(url, timeout=15, allow_redirects=False).headers["Location"]
    assert requests.get(callback, timeout=15).status_code == 200
    # the used request token with the state of a fresh login: Kite refuses it
    [params] = parse_qs(urlparse(login_url_of(login_stack, make_token)).query)["redirect_params"]
    used = parse_qs(urlparse(callback).query)["request_token"][0]
    again = requests.get(f"{login_stack['web']}/kite/callback/{API_KEY}", timeout=15,
                         params={"request_token": used, "state": parse_qs(params)["state"][0]})
    assert again.status_code == 400 and again.json()["code"] == "login_failed"


def test_login_url_needs_an_admin_and_a_known_account(login_stack, make_token):
    web = login_stack["web"]
    assert requests.get(f"{web}/kite/login/{API_KEY}", timeout=5).json()["code"] == "auth_required"
    user = {"Authorization": f"Bearer {make_token('someone')}"}
    assert requests.get(f"{web}/kite/login/{API_KEY}", headers=user, timeout=5).status_code == 403
    admin = {"Authorization": f"Bearer {make_token('ops', admin=True)}"}
    unknown = requests.get(f"{web}/kite/login/nobody", headers=admin, timeout=5)
    assert unknown.status_code == 404 and unknown.json()["code"] == "unknown_account"


def test_token_check_renews_an_expired_token_then_marks_a_dead_one_invalid(app, account, login_stack, make_token,
                                                                           redis):
    log_in(login_stack, make_token)
    config = {**app.config, "KITE_API_ROOT": login_stack["sim"]}
    before = accounts.account_credentials(account, API_KEY).access_token
    assert check_all(account, config)[API_KEY] == "valid"

    requests.post(f"{login_stack['sim']}/_sim/expire", params={"api_key": API_KEY}, timeout=5)
    assert check_all(account, config)[API_KEY] == "renewed"
    renewed = accounts.account_credentials(account, API_KEY)
    assert renewed.token_valid and renewed.access_token != before

    pubsub = redis.pubsub()
    pubsub.subscribe(keys.SOCKETIO_CHANNEL)
    pubsub.get_message(timeout=1)
    refresh = accounts.refresh_token(account, API_KEY)
    requests.delete(f"{login_stack['sim']}/session/token", params={"api_key": API_KEY, "refresh_token": refresh},
                    timeout=5)
    requests.post(f"{login_stack['sim']}/_sim/expire", params={"api_key": API_KEY}, timeout=5)
    assert check_all(account, config)[API_KEY] == "invalid"
    summary = next(s for s in accounts.account_summaries(account) if s["api_key"] == API_KEY)
    assert summary["token_valid"] is False and "TokenException" in summary["token_invalid_reason"]
    emitted = wait_for(lambda: pubsub.get_message(timeout=0.5), 5, "the operators' control message")
    pubsub.close()
    assert "kite_account" in str(emitted["data"]) and API_KEY in str(emitted["data"])
    health = requests.get(f"{login_stack['web']}/health", timeout=5).json()
    assert any(API_KEY in reason for reason in health["checks"]["jobs"]["reasons"])


# -- The login state: each callback completes a login an admin started, once -------------------


def login_url_of(login_stack, make_token, api_key: str = API_KEY, admin: str = "ops") -> str:
    headers = {"Authorization": f"Bearer {make_token(admin, admin=True)}"}
    reply = requests.get(f"{login_stack['web']}/kite/login/{api_key}", headers=headers, timeout=5)
    assert reply.status_code == 200, reply.text
    return reply.json()["login_url"]


def callback_of(login_url: str) -> str:
    """Where Kite (the simulator) sends the browser after the login."""
    redirect = requests.get(login_url, allow_redirects=False, timeout=5)
    assert redirect.status_code == 302, redirect.text
    return redirect.headers["Location"]


def stored_token(session) -> str | None:
    session.expire_all()
    return accounts.account_credentials(session, API_KEY).access_token


def assert_state_refused(reply: requests.Response) -> None:
    assert reply.status_code == 400, reply.text
    assert reply.json()["code"] == "login_state_invalid"


def test_the_login_url_carries_a_state_that_kite_hands_back(account, login_stack, make_token):
    url = login_url_of(login_stack, make_token)
    [redirect_params] = parse_qs(urlparse(url).query)["redirect_params"]
    [state] = parse_qs(redirect_params)["state"]
    assert len(state) >= 32
    assert parse_qs(urlparse(callback_of(url)).query)["state"] == [state]


def test_a_callback_completes_once_and_its_replay_is_refused(account, login_stack, make_token):
    callback = callback_of(login_url_of(login_stack, make_token))
    assert requests.get(callback, timeout=15).status_code == 200
    token = stored_token(account)

    assert_state_refused(requests.get(callback, timeout=15))
    assert stored_token(account) == token


def test_a_callback_without_a_state_of_this_login_is_refused_before_kite_is_asked(account, login_stack,
                                                                                  make_token, app):
    before = stored_token(account)
    callback = urlparse(callback_of(login_url_of(login_stack, make_token)))
    query = {k: v[0] for k, v in parse_qs(callback.query).items()}
    base = f"{login_stack['web']}/kite/callback/{API_KEY}"
    crafted = [
        {k: v for k, v in query.items() if k != "state"},  # no state
        {**query, "state": "made-up-" + "x" * 40},  # one never issued
    ]
    # another account's state: a login of a second account, its state on this account's callback
    with app.app_context():
        accounts.add_account(account, "other_key", "other_secret")
    try:
        [other_params] = parse_qs(urlparse(login_url_of(login_stack, make_token, "other_key")).query)["redirect_params"]
        crafted.append({**query, "state": parse_qs(other_params)["state"][0]})
        for params in crafted:
            assert_state_refused(requests.get(base, params=params, timeout=15))
    finally:
        account.query(KiteAccount).filter_by(api_key="other_key").delete()
        account.commit()
    assert stored_token(account) == before
    # the request token was never spent: the real login's callback still completes
    assert requests.get(base, params=query, timeout=15).status_code == 200
    metrics = requests.get(f"{login_stack['web']}/metrics", timeout=5).text
    assert re.search(r'ticker_http_errors_total\{reason="login_state_invalid"\} [3-9]', metrics)
