"""A crowd: hundreds of clients connecting and subscribing in the same second, as after a
replica restart or a deploy. Every one of them is admitted and subscribed (or told to retry
with a documented code), none gets `internal_error`, and all of them receive ticks, in both
async modes: the replica waits for its bounded resources instead of failing, and its own
background work (the demand heartbeat that makes shards stream the tokens) never starves."""

from __future__ import annotations

import pytest

from tests.support.crowd import crowd
from tests.web.webproc import start_web, tokens_of

pytestmark = pytest.mark.integration

CROWD = 500


@pytest.mark.parametrize("mode", ["gevent", "eventlet"])
def test_a_crowd_connecting_at_once_is_served_without_errors(mode, stack, processes, service_env, workdir,
                                                             make_token, database):
    web = start_web(processes, service_env, workdir, f"web-crowd-{mode}", ASYNC_MODE=mode,
                    MAX_CONNECTS_PER_ADDRESS_PER_SEC="100000")  # the whole crowd comes from 127.0.0.1
    tokens = tokens_of(database, "NSE", 3, skip=700 if mode == "gevent" else 720)
    jwts = [make_token(f"crowd-{mode}-{n}") for n in range(CROWD)]

    report = crowd(web.url, jwts, {"tokens": tokens, "mode": "ltp"}, settle=40)

    assert report.error_codes() == {}, report.error_codes()
    assert report.subscribed() == CROWD
    assert all(client.reply["tokens"] == tokens for client in report.clients)
    assert report.receiving() == CROWD, f"{report.receiving()} of {CROWD} clients received ticks"
