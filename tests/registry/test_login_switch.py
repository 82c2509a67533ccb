"""A login through the service's callback switches running shards to the new access token
without losing their subscriptions. Runs against the upstream pool of tests/support/pool.py (its own simulator,
Redis database, accounts database, shard workers and beat) plus a web replica for the callback."""

from __future__ import annotations

import sys

import pytest
import requests

from tests.conftest import DATABASE_URL, ISOLATED_REDIS_URL
from tests.support.pool import nse_tokens, running_pool
from tests.support.processes import Process, free_port, port_open, wait_for
from ticker.bus import keys
from ticker.db import session_for
from ticker.registry import accounts

pytestmark = pytest.mark.integration

LOGIN_POOL_DATABASE_URL = DATABASE_URL + "_login_pool"


@pytest.fixture(scope="module")
def pool(service_env, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("login-pool")
    with running_pool(service_env, workdir, LOGIN_POOL_DATABASE_URL, ISOLATED_REDIS_URL) as pool:
        port = free_port()
        web = Process("login-pool-web", [sys.executable, "wsgi.py"], {**pool.env, "PORT": str(port)}, workdir)
        try:
            wait_for(lambda: port_open(port), 30, "the web replica")
            pool.web = f"http://127.0.0.1:{port}"
            pool.web_process = web
            yield pool
        finally:
            web.stop()


def shards(pool) -> dict[str, tuple[int, int]]:
    """slot -> (tokens streamed, reconnects so far) as each shard reports it."""
    states = {}
    for key in pool.redis.scan_iter(match=keys.shard_state("*")):
        state = pool.redis.hgetall(key)
        states[key.split(":shard:", 1)[1].rsplit(":", 1)[0]] = (int(state.get("tokens", 0)),
                                                                 int(state.get("reconnects", 0)))
    return states


def test_login_switches_running_shards_to_the_new_token(pool):
    tokens = nse_tokens(pool.sim)[:20]
    pool.want(tokens)
    pool.wait_ticking(tokens, timeout=30)
    with session_for(LOGIN_POOL_DATABASE_URL) as session:
        old = accounts.account_credentials(session, "k1").access_token
    streaming = {slot: reconnects for slot, (tokens_held, reconnects) in shards(pool).items() if tokens_held}

    for api_key in ("k1", "k2"):  # a login per account, through the service's callback
        login = requests.get(f"{pool.sim}/connect/login", params={"api_key": api_key, "v": 3},
                             allow_redirects=False, timeout=5)
        request_token = login.headers["Location"].split("request_token=")[1].split("&")[0]
        reply = requests.get(f"{pool.web}/kite/callback/{api_key}", params={"request_token": request_token},
                             timeout=15)
        assert reply.status_code == 200, reply.text
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
