"""Limits that hold across replicas and behind proxies, with real replicas and clients: a user's
connections are counted on every replica together (and a killed replica's stop counting by
themselves), a user's requests to the Kite-shaped endpoints are counted by each replica, and
the connection-attempt limit counts the address a trusted proxy reports."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import pytest
import requests
import socketio
from kiteconnect import KiteConnect
from kiteconnect.exceptions import NetworkException

from tests.support.clients import RecordingClient
from tests.support.processes import wait_for
from tests.web.webproc import start_web
from ticker.bus.demand import REPLICA_TTL_SECS
from ticker.clock import IST

pytestmark = pytest.mark.integration

PER_USER = 3


@pytest.fixture
def opened():
    clients: list[RecordingClient] = []
    yield clients
    for client in clients:
        client.close()


def test_a_users_connections_are_limited_across_replicas(stack, processes, service_env, workdir, make_token, opened):
    a, b = (start_web(processes, service_env, workdir, f"web-per-user-{n}", MAX_CONNECTIONS_PER_USER=str(PER_USER))
            for n in "ab")
    token = make_token("erin")

    def admitted(url: str) -> RecordingClient | None:
        client = RecordingClient()
        try:
            client.connect(url, token)
        except socketio.exceptions.ConnectionError:
            return None
        opened.append(client)
        return client

    def refusal(url: str) -> str:
        return RecordingClient().try_connect(url, auth={"token": token})["code"]

    admin = {"Authorization": f"Bearer {make_token('root', admin=True)}"}
    users = lambda: requests.get(f"{b.url}/ws/stats", headers=admin, timeout=5).json()["totals"]["users"]  # noqa: E731
    before = users()
    leaving, _, _ = admitted(a.url), admitted(a.url), admitted(b.url)
    assert refusal(a.url) == refusal(b.url) == "too_many_connections"
    assert users() == before + 1  # on two replicas, one user

    leaving.close()
    wait_for(lambda: admitted(b.url), 5, "a place freed by a disconnect on the other replica", interval=0.3)
    assert refusal(a.url) == refusal(b.url) == "too_many_connections"

    a.process.kill()  # SIGKILL: the replica cannot uncount its last connection
    killed_at = time.monotonic()
    assert refusal(b.url) == "too_many_connections"
    wait_for(lambda: admitted(b.url), REPLICA_TTL_SECS + 5, "the killed replica's connection to stop counting",
             interval=0.5)
    assert time.monotonic() - killed_at <= REPLICA_TTL_SECS + 5
    assert refusal(b.url) == "too_many_connections"  # b's own three still count


def attempt_codes(url: str, forwarded_for: list[str]) -> list[str]:
    """Connect once per X-Forwarded-For value, without a JWT: `auth_required` when the address
    limit let the attempt through, `rate_limited` when it did not."""
    return [RecordingClient().try_connect(url, headers={"X-Forwarded-For": value})["code"] for value in forwarded_for]


@pytest.fixture(scope="module")
def behind_proxy(stack, processes, service_env, workdir):
    return start_web(processes, service_env, workdir, "web-behind-proxy", TRUSTED_PROXY_COUNT="1",
                     MAX_CONNECTS_PER_ADDRESS_PER_SEC="2")


def test_behind_a_trusted_proxy_the_address_it_appended_is_limited(behind_proxy):
    # Six attempts take well under two seconds: at most four get through one address's limit.
    same_client = attempt_codes(behind_proxy.url, [f"10.1.0.{n}, 10.9.9.9" for n in range(6)])
    assert same_client.count("rate_limited") >= 2, same_client

    time.sleep(1.1)
    # What a client writes before the proxy's entry is not its address: the same forged value
    # from six clients is six addresses.
    many_clients = attempt_codes(behind_proxy.url, [f"6.6.6.6, 10.2.0.{n}" for n in range(6)])
    assert many_clients == ["auth_required"] * 6


def test_without_trusted_proxies_the_header_is_ignored(stack, processes, service_env, workdir):
    web = start_web(processes, service_env, workdir, "web-no-proxy", MAX_CONNECTS_PER_ADDRESS_PER_SEC="2")

    forged = attempt_codes(web.url, [f"10.3.0.{n}" for n in range(6)])

    assert forged.count("rate_limited") >= 2, forged


def test_a_users_quote_and_candle_requests_are_limited_by_each_replica(stack, processes, service_env, workdir,
                                                                        make_token):
    """Beyond MAX_REST_REQUESTS_PER_USER_PER_SEC, Kite's 429 NetworkException (what Kite answers
    its own limits with), so the official client raises NetworkException; candles count with
    quotes; other users are not touched; the next second the user is served again. Each replica
    counts its own (behind ip_hash, one address's requests all reach one replica)."""
    limit = 4
    a = start_web(processes, service_env, workdir, "web-rest", MAX_REST_REQUESTS_PER_USER_PER_SEC=str(limit))
    other_replica = stack["url"]
    rita, sam = make_token("rita"), make_token("sam")
    wait_for(lambda: kite(a.url, sam).ltp(["NSE:INFY"]), 10, "a first quote", interval=1.1)  # INFY streams
    time.sleep(1.1)

    session = requests.Session()
    replies = [session.get(f"{a.url}/quote/ltp", params={"i": "NSE:INFY"},
                           headers={"Authorization": f"token any:{rita}"}, timeout=10)
               for _ in range(3 * limit)]  # well within two seconds
    statuses = [reply.status_code for reply in replies]
    assert set(statuses) == {200, 429} and statuses.count(200) <= 2 * limit, statuses  # one second, or two
    refused = next(reply for reply in replies if reply.status_code == 429)
    assert refused.json() == {"status": "error", "error_type": "NetworkException", "data": None,
                              "code": "rate_limited",
                              "message": f"too many requests: at most {limit} a second per user"}
    assert refused.headers["Retry-After"] == "1"
    with pytest.raises(NetworkException, match="too many requests") as raised:
        kite(a.url, rita).historical_data(408065, *candle_window(), "minute")  # candles count too
    assert raised.value.code == 429

    assert kite(a.url, sam).ltp(["NSE:INFY"])["NSE:INFY"]["last_price"] > 0  # another user: served
    assert kite(other_replica, rita).ltp(["NSE:INFY"])["NSE:INFY"]["last_price"] > 0  # another replica's count
    time.sleep(1.1)
    assert kite(a.url, rita).ltp(["NSE:INFY"])["NSE:INFY"]["last_price"] > 0  # the next second
    scrape = requests.get(f"{a.url}/metrics", params={"scope": "replica"}, timeout=5).text
    assert 'ticker_http_errors_total{reason="rate_limited"}' in scrape


def kite(url: str, jwt: str) -> KiteConnect:
    client = KiteConnect(api_key="any", root=url)
    client.set_access_token(jwt)
    return client


def candle_window() -> tuple[datetime, datetime]:
    now = datetime.now(IST).replace(tzinfo=None, microsecond=0)
    return now - timedelta(minutes=5), now
