"""No secret reaches the logs of a real web replica on the connect and Kite login paths.

A web replica and a simulator of its own (own database, own Redis database, so the login's
new access token disturbs no other test), logging at DEBUG. The test presents JWTs in every
place a client may put one (auth payload, query string, header; valid and refused), completes
a Kite login (login URL → request token → session exchange with the API secret), then reads
the replica's log for every one of those secrets.
"""

from __future__ import annotations

import hashlib
import sys
from urllib.parse import parse_qs, urlparse

import pytest
import requests

from tests.conftest import ISOLATED_REDIS_URL
from tests.support.clients import RecordingClient
from tests.support.processes import Process, free_port, port_open, stop_all, wait_for
from ticker.db import session_for
from ticker.registry import accounts
from ticker.registry.migrate import recreate_database

pytestmark = pytest.mark.integration

API_KEY, API_SECRET, FIRST_ACCESS_TOKEN = "logkey", "s3cret-api-secret-0451", "first-access-token-0451"


@pytest.fixture(scope="module")
def replica(service_env, workdir, database):
    """A simulator and a web replica of their own; returns (web url, web process, database url)."""
    db_url = recreate_database(f"{database}_logs")
    with session_for(db_url) as session:
        accounts.add_account(session, API_KEY, API_SECRET)

    sim_port, web_port = free_port(), free_port()
    kite = f"127.0.0.1:{sim_port}"
    sim = Process("logs-sim", [
        sys.executable, "-m", "ticker.sim", "--port", str(sim_port), "--seed", "3",
        "--account", f"{API_KEY}:{API_SECRET}:{FIRST_ACCESS_TOKEN}",
        "--redirect-url", f"http://127.0.0.1:{web_port}/kite/callback/{API_KEY}",
    ], service_env, workdir)
    env = {
        **service_env, "PORT": str(web_port), "LOG_LEVEL": "DEBUG", "DATABASE_URL": db_url,
        "REDIS_URL": ISOLATED_REDIS_URL, "KITE_API_ROOT": f"http://{kite}", "KITE_TICKER_ROOT": f"ws://{kite}",
        "KITE_LOGIN_ROOT": f"http://{kite}", "KITE_API_KEY": API_KEY, "KITE_API_SECRET": API_SECRET,
    }
    web = Process("logs-web", [sys.executable, "wsgi.py"], env, workdir)
    try:
        wait_for(lambda: port_open(sim_port) and port_open(web_port), 30, "the simulator and web replica")
        yield f"http://127.0.0.1:{web_port}", web, db_url
    finally:  # at the end of this module: they share the isolated Redis database with later tests
        stop_all([web, sim])


def connect_every_way(url: str, make_token) -> list[str]:
    """Connect with a JWT in each place a client may put one, and get refused in each; returns the JWTs."""
    good = [make_token(f"log-user-{n}") for n in range(3)]
    expired, stranger = make_token("log-late", ttl=-60), make_token("log-other")[:-8] + "AAAAAAAA"
    clients = [
        RecordingClient().connect(url, good[0]),
        RecordingClient().connect(f"{url}?token={good[1]}"),
        RecordingClient().connect(url, headers={"Authorization": f"Bearer {good[2]}"}),
    ]
    for client in clients:
        wait_for(lambda c=client: c.events["connected"], 5, "connected")
        client.call("ping")
        client.close()
    refused = [
        RecordingClient().try_connect(url, auth={"token": expired}),
        RecordingClient().try_connect(f"{url}?token={stranger}"),
        RecordingClient().try_connect(url, headers={"Authorization": f"Bearer {stranger}"}),
    ]
    assert [r["code"] for r in refused] == ["token_expired", "token_invalid", "token_invalid"]
    return [*good, expired, stranger]


def kite_login(url: str, make_token) -> tuple[str, str]:
    """The operator's login flow as a browser follows it; returns (request token, checksum)."""
    admin = {"Authorization": f"Bearer {make_token('log-admin', admin=True)}"}
    login_url = requests.get(f"{url}/kite/login/{API_KEY}", headers=admin, timeout=5).json()["login_url"]
    redirect = requests.get(login_url, allow_redirects=False, timeout=5)
    assert redirect.status_code == 302, redirect.text
    callback = requests.get(redirect.headers["Location"], timeout=10)
    assert callback.status_code == 200, callback.text
    assert callback.json()["status"] == "logged_in"
    request_token = requests.utils.urlparse(redirect.headers["Location"]).query.split("request_token=")[1]
    request_token = request_token.split("&")[0]
    return request_token, hashlib.sha256(f"{API_KEY}{request_token}{API_SECRET}".encode()).hexdigest()


def test_no_secret_in_the_logs_of_the_connect_and_login_paths(replica, make_token):
    url, web, db_url = replica
    jwts = connect_every_way(url, make_token)
    request_token, checksum = kite_login(url, make_token)
    with session_for(db_url) as session:
        access_token = accounts.account_credentials(session, API_KEY).access_token
    assert access_token and access_token != FIRST_ACCESS_TOKEN

    log = web.output()
    # The events happened and were logged, so the absence of secrets below means something.
    assert log.count("connected ") >= 3 and log.count("refused") >= 3, log[-3000:]
    assert f"Kite login of api_key {API_KEY}" in log, log[-3000:]
    secrets = {"api secret": API_SECRET, "request token": request_token, "checksum": checksum,
               "access token": access_token, **{f"jwt {n}": jwt for n, jwt in enumerate(jwts)}}
    for what, secret in secrets.items():
        assert secret not in log, f"the {what} is in the web replica's log"
    for signature_or_payload in {part for jwt in jwts for part in jwt.split(".")[1:] if len(part) > 10}:
        assert signature_or_payload not in log, "part of a JWT is in the web replica's log"


def test_a_kite_login_refusal_does_not_echo_the_request_token(replica, make_token):
    url, web, _ = replica
    used = "reusedrequesttoken0451"
    admin = {"Authorization": f"Bearer {make_token('log-admin', admin=True)}"}
    login_url = requests.get(f"{url}/kite/login/{API_KEY}", headers=admin, timeout=5).json()["login_url"]
    redirect_params = parse_qs(urlparse(login_url).query)["redirect_params"][0]
    reply = requests.get(f"{url}/kite/callback/{API_KEY}", timeout=10,
                         params={"request_token": used, **parse_qs(redirect_params)})

    assert reply.status_code == 400 and reply.json()["code"] == "login_failed"
    assert used not in reply.text and used not in web.output()


