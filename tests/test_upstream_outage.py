"""The daily token expiry: every Kite account's access token is refused (a single-account
install's morning). Clients keep their subscriptions, hear `upstream_unavailable` with the
reason `token_expired` (never `capacity_exhausted`, never `unsubscribed`), may even subscribe to
more meanwhile, and their ticks resume by themselves once a login stores fresh tokens.

Runs against an upstream pool of its own (tests/support/pool.py: simulator, Redis database,
accounts database, shard workers and beat) plus a web replica."""

from __future__ import annotations

import sys

import pytest
import requests

from tests.conftest import DATABASE_URL, ISOLATED_REDIS_URL
from tests.support.clients import RecordingClient
from tests.support.pool import ACCOUNTS, nse_tokens, running_pool
from tests.support.processes import Process, free_port, port_open, wait_for

pytestmark = pytest.mark.integration

OUTAGE_DATABASE_URL = DATABASE_URL + "_outage"


@pytest.fixture(scope="module")
def pool(service_env, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("outage-pool")
    with running_pool(service_env, workdir, OUTAGE_DATABASE_URL, ISOLATED_REDIS_URL) as pool:
        port = free_port()
        web = Process("outage-web", [sys.executable, "wsgi.py"], {**pool.env, "PORT": str(port)}, workdir)
        try:
            wait_for(lambda: port_open(port), 30, "the web replica")
            pool.web = f"http://127.0.0.1:{port}"
            wait_for(lambda: requests.get(f"{pool.web}/health", timeout=5).status_code == 200, 60,
                     "the registry loaded and a shard streaming")
            yield pool
        finally:
            web.stop()


def login(pool, api_key: str) -> None:
    """A Kite login through the service's callback, as an operator completes it in a browser."""
    page = requests.get(f"{pool.sim}/connect/login", params={"api_key": api_key, "v": 3}, allow_redirects=False,
                        timeout=5)
    request_token = page.headers["Location"].split("request_token=")[1].split("&")[0]
    reply = requests.get(f"{pool.web}/kite/callback/{api_key}", params={"request_token": request_token}, timeout=15)
    assert reply.status_code == 200, reply.text


def unavailable(client: RecordingClient, reason: str) -> set[int]:
    return {token for error in client.events["error"] if error.get("code") == "upstream_unavailable"
            and error.get("reason") == reason for token in error["tokens"]}


def ticks_since(client: RecordingClient, count: int) -> set[int]:
    return {tick["instrument_token"] for tick in client.ticks()[count:]}


def test_the_morning_token_expiry_keeps_every_subscription_and_ticks_resume_after_a_login(pool, make_token):
    universe = nse_tokens(pool.sim)
    held, later = universe[:10], universe[10:12]
    client = RecordingClient()
    client.sio.on("upstream_restored", lambda data: client.events["upstream_restored"].append(data))
    client.connect(pool.web, make_token("morning"))
    try:
        assert client.call("subscribe", {"tokens": held, "mode": "ltp"})["rejected"] == []
        client.wait_for_ticks(held, count=2, timeout=20)

        for api_key in ACCOUNTS:  # 06:00 IST: Kite expires every access token
            requests.post(f"{pool.sim}/_sim/expire", params={"api_key": api_key}, timeout=5)
        wait_for(lambda: unavailable(client, "token_expired") >= set(held), 30,
                 "the clients to hear that the upstream refused the token")
        health = requests.get(f"{pool.web}/health", timeout=10)
        assert health.status_code == 503 and "token" in health.json()["checks"]["shards"]["reason"], health.json()

        reply = client.call("subscribe", {"tokens": later, "mode": "ltp"})  # more, during the outage
        assert reply["tokens"] == later and reply["rejected"] == [] and reply["total"] == 12, reply
        wait_for(lambda: unavailable(client, "token_expired") >= set(later), 5, "the late subscriber told at once")

        seen = len(client.ticks())
        for api_key in ACCOUNTS:  # an operator logs in again
            login(pool, api_key)
        wait_for(lambda: ticks_since(client, seen) >= set(held + later), 40, "ticks for every token again")
        wait_for(lambda: {t for e in client.events["upstream_restored"] for t in e["tokens"]} >= set(held + later),
                 10, "the clients to hear the upstream is back")

        codes = [error.get("code") for error in client.events["error"]]
        assert set(codes) == {"upstream_unavailable"}, codes  # never capacity_exhausted
        assert client.events["unsubscribed"] == []  # nothing was taken away
        assert client.call("unsubscribe", {"tokens": []})["total"] == 12
    finally:
        client.close()
