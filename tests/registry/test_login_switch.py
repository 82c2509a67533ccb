"""Kite logins and the daily token expiry, against the upstream pool of tests/support/pool.py (its
own simulator, Redis database, accounts database, shard workers and beat) plus a web replica:

- a login through the service's callback switches running shards to the new access token
  without losing their subscriptions;
- a worker killed mid-stream: /health and the clients hear of the dark slot until it is taken over;
- the morning expiry of every account's token (a single-account install's every morning):
  clients keep their subscriptions, hear `upstream_unavailable` with the reason `token_expired`
  (never `capacity_exhausted`, never `unsubscribed`), may even subscribe to more meanwhile, and
  their ticks resume by themselves once a login stores fresh tokens."""

from __future__ import annotations

import os
import signal
import sys
from urllib.parse import parse_qsl, urlparse

import pytest
import requests

from tests.conftest import DATABASE_URL, ISOLATED_REDIS_URL
from tests.support.clients import RecordingClient
from tests.support.pool import ACCOUNTS, nse_tokens, running_pool
from tests.support.processes import Process, free_port, port_open, stop_all, wait_for
from ticker.bus import keys
from ticker.db import session_for
from ticker.registry import accounts

pytestmark = pytest.mark.integration

LOGIN_POOL_DATABASE_URL = DATABASE_URL + "_login_pool"


@pytest.fixture(scope="module")
def pool(service_env, tmp_path_factory):
    """The pool, and a web replica in each async mode (`pool.webs`); `pool.web` is gevent's."""
    workdir = tmp_path_factory.mktemp("login-pool")
    with running_pool(service_env, workdir, LOGIN_POOL_DATABASE_URL, ISOLATED_REDIS_URL) as pool:
        ports = {mode: free_port() for mode in ("gevent", "eventlet")}
        webs = {mode: Process(f"login-pool-web-{mode}", [sys.executable, "wsgi.py"],
                              {**pool.env, "PORT": str(port), "ASYNC_MODE": mode}, workdir)
                for mode, port in ports.items()}
        try:
            for port in ports.values():
                wait_for(lambda: port_open(port), 30, "the web replicas")  # noqa: B023
            pool.webs = {mode: f"http://127.0.0.1:{port}" for mode, port in ports.items()}
            pool.web, pool.web_process = pool.webs["gevent"], webs["gevent"]
            yield pool
        finally:
            stop_all(webs.values())


def shards(pool) -> dict[str, tuple[int, int]]:
    """slot -> (tokens streamed, reconnects so far) as each shard reports it."""
    states = {}
    for key in pool.redis.scan_iter(match=keys.shard_state("*")):
        state = pool.redis.hgetall(key)
        states[key.split(":shard:", 1)[1].rsplit(":", 1)[0]] = (int(state.get("tokens", 0)),
                                                                 int(state.get("reconnects", 0)))
    return states


def login(pool, api_key: str, make_token) -> None:
    """A Kite login through the service's callback, as an operator completes it in a browser:
    the login URL (with its state) from the service, Kite's redirect back to the callback."""
    admin = {"Authorization": f"Bearer {make_token('ops', admin=True)}"}
    url = requests.get(f"{pool.web}/kite/login/{api_key}", headers=admin, timeout=5).json()["login_url"]
    # the pool's own simulator plays Kite's login page (the replica's KITE_LOGIN_ROOT is the run's)
    page = requests.get(f"{pool.sim}/connect/login?{urlparse(url).query}", allow_redirects=False, timeout=5)
    query = dict(parse_qsl(urlparse(page.headers["Location"]).query))
    reply = requests.get(f"{pool.web}/kite/callback/{api_key}", params=query, timeout=15)
    assert reply.status_code == 200, reply.text


def test_login_switches_running_shards_to_the_new_token(pool, make_token):
    tokens = nse_tokens(pool.sim)[:20]
    pool.want(tokens)
    pool.wait_ticking(tokens, timeout=30)
    with session_for(LOGIN_POOL_DATABASE_URL) as session:
        old = accounts.account_credentials(session, "k1").access_token
    streaming = {slot: reconnects for slot, (tokens_held, reconnects) in shards(pool).items() if tokens_held}

    for api_key in ("k1", "k2"):  # a login per account, through the service's callback
        login(pool, api_key, make_token)
    with session_for(LOGIN_POOL_DATABASE_URL) as session:
        new = accounts.account_credentials(session, "k1").access_token
    assert new != old

    wait_for(lambda: all(shards(pool).get(slot, (0, 0))[1] > before for slot, before in streaming.items()), 30,
             "the streaming shards to reconnect with the new tokens")
    pool.wait_ticking(tokens, timeout=30)

    assert new not in pool.web_process.output()
    pool.previous_tokens = {"k1": old, "k2": "t2"}


def test_revoking_the_previous_tokens_after_the_switch_disturbs_nothing(pool):
    # After the switch above: a connection still using a previous token would be closed with an
    # error frame. None is, every instrument keeps ticking and both accounts stay valid.
    tokens = nse_tokens(pool.sim)[:20]
    error_frames = pool.sim_stats()["totals"].get("error_frames", 0)
    for api_key, token in pool.previous_tokens.items():
        requests.delete(f"{pool.sim}/session/token", params={"api_key": api_key, "access_token": token}, timeout=5)
    pool.wait_ticking(tokens, timeout=10)
    assert pool.sim_stats()["totals"].get("error_frames", 0) == error_frames
    with session_for(LOGIN_POOL_DATABASE_URL) as session:
        states = {row["api_key"]: (row["token_valid"], row["token_invalid_reason"])
                  for row in accounts.account_summaries(session)}
    assert states == {"k1": (True, None), "k2": (True, None)}


def unavailable(client: RecordingClient, reason: str) -> set[int]:
    return {token for error in client.events["error"] if error.get("code") == "upstream_unavailable"
            and error.get("reason") == reason for token in error["tokens"]}


def ticks_since(client: RecordingClient, count: int) -> set[int]:
    return {tick["instrument_token"] for tick in client.ticks()[count:]}


def listening_client(url: str, jwt: str) -> RecordingClient:
    client = RecordingClient()
    client.sio.on("upstream_restored", lambda data: client.events["upstream_restored"].append(data))
    return client.connect(url, jwt)


def restored(client: RecordingClient) -> set[int]:
    return {token for event in client.events["upstream_restored"] for token in event["tokens"]}


def test_the_morning_token_expiry_keeps_every_subscription_and_ticks_resume_after_a_login(pool, make_token):
    universe = nse_tokens(pool.sim)
    held, later = universe[:10], universe[10:12]
    for url in pool.webs.values():
        wait_for(lambda: requests.get(f"{url}/health", timeout=5).status_code == 200, 60,  # noqa: B023
                 "the registry loaded and a shard streaming")
    clients = [listening_client(url, make_token(f"morning-{mode}")) for mode, url in pool.webs.items()]
    try:
        for client in clients:
            assert client.call("subscribe", {"tokens": held, "mode": "ltp"})["rejected"] == []
            client.wait_for_ticks(held, count=2, timeout=20)

        for api_key in ACCOUNTS:  # 06:00 IST: Kite expires every access token
            requests.post(f"{pool.sim}/_sim/expire", params={"api_key": api_key}, timeout=5)
        for client in clients:
            wait_for(lambda: unavailable(client, "token_expired") >= set(held), 30,  # noqa: B023
                     "the clients to hear that the upstream refused the token")
        health = requests.get(f"{pool.web}/health", timeout=10)
        assert health.status_code == 503 and "token" in health.json()["checks"]["shards"]["reason"], health.json()

        for client in clients:  # more, during the outage
            reply = client.call("subscribe", {"tokens": later, "mode": "ltp"})
            assert reply["tokens"] == later and reply["rejected"] == [] and reply["total"] == 12, reply
            wait_for(lambda: unavailable(client, "token_expired") >= set(later), 5,  # noqa: B023
                     "the late subscriber told at once")

        seen = [len(client.ticks()) for client in clients]
        for api_key in ACCOUNTS:  # an operator logs in again
            login(pool, api_key, make_token)
        for client, count in zip(clients, seen, strict=True):
            wait_for(lambda: ticks_since(client, count) >= set(held + later), 40,  # noqa: B023
                     "ticks for every token again")
            wait_for(lambda: restored(client) >= set(held + later), 10,  # noqa: B023
                     "the clients to hear the upstream is back")
            codes = [error.get("code") for error in client.events["error"]]
            assert set(codes) == {"upstream_unavailable"}, codes  # never capacity_exhausted
            assert client.events["unsubscribed"] == []  # nothing was taken away
            assert client.call("unsubscribe", {"tokens": []})["total"] == 12
    finally:
        for client in clients:
            client.close()


def test_a_worker_killed_mid_stream_is_reported_until_its_slot_is_taken_over(pool, make_token):
    """kill -9 of the worker streaming a client's tokens: within seconds /health stops saying
    `ok` and names the dark slot, the client hears `upstream_unavailable` (`no_connection`), and
    once the other worker took the slot over, `upstream_restored` and `ok` again."""
    tokens = nse_tokens(pool.sim)[20:26]
    client = listening_client(pool.webs["eventlet"], make_token("takeover"))
    try:
        client.call("subscribe", {"tokens": tokens, "mode": "ltp"})
        client.wait_for_ticks(tokens, count=2, timeout=20)
        slot = pool.redis.hget(keys.ASSIGNED_SLOT, tokens[0])
        child = int(pool.redis.hget(keys.shard_state(slot), "pid"))
        victim = next(w for w in pool.workers if w.pid == int(open(f"/proc/{child}/stat").read().split()[3]))

        os.killpg(victim.pid, signal.SIGKILL)  # the worker and its children, without a word
        pool.workers.remove(victim)
        dark = wait_for(lambda: (r := requests.get(f"{pool.web}/health", timeout=10).json())["status"] != "ok"
                        and r, 10, "/health to stop saying ok")
        assert slot in dark["checks"]["shards"]["reason"], dark["checks"]["shards"]
        wait_for(lambda: set(tokens) <= {t for e in client.events["error"] if e.get("code") == "upstream_unavailable"
                                        for t in e["tokens"]}, 15, "the client to hear its tokens went dark")
        wait_for(lambda: set(tokens) <= restored(client), 30, "the slot to be taken over and the client told")
        wait_for(lambda: requests.get(f"{pool.web}/health", timeout=10).json()["status"] == "ok", 15, "/health ok")
        seen = len(client.ticks())
        wait_for(lambda: set(tokens) <= ticks_since(client, seen), 15, "ticks again")
    finally:
        client.close()
        pool.start_worker("w-after-takeover")
