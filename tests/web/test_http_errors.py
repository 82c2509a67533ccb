"""A web replica whose PostgreSQL or Redis fails under it, in both async modes.

The replica (a real `python wsgi.py`, gevent and eventlet) reaches PostgreSQL and Redis through
TCP proxies the test controls: pointed at a closed port and reset, a dependency is gone; black-
holed, its packets vanish (no FIN, no RST). Every HTTP route answers JSON `{code, message}`;
a black-holed database costs a request a bounded wait while the replica's Socket.IO clients go
on receiving ticks; a registry mirror lost from Redis never makes a valid instrument unknown;
beat jobs' status outlives a Redis restarted empty.
"""

from __future__ import annotations

import threading
import time
from urllib.parse import urlsplit

import pytest
import redis as redis_lib
import requests
from flask import Flask
from sqlalchemy import text

from tests.conftest import REDIS_URL, start
from tests.support.clients import RecordingClient
from tests.support.processes import free_port, port_open, wait_for
from tests.support.proxy import TcpProxy
from tests.web.test_metrics import samples
from tests.web.webproc import start_web, tokens_of
from ticker.bus import keys
from ticker.bus.connection import WaitingConnectionPool
from ticker.db import engine_for, session_for
from ticker.jobs import run_job
from ticker.registry.mirror import copy_pairs, fingerprint
from ticker.web import http_errors

pytestmark = pytest.mark.integration

POSTGRES = ("127.0.0.1", 5432)
STATEMENT_TIMEOUT_SECS = "1"  # the replica's bound on a statement, so a dead database is noticed soon
POOL_TIMEOUT_SECS = "0.5"  # well within a connect: the searches beyond the pool give up first
CONNECT_TIMEOUT_SECS = "2"
CONCURRENT_SEARCHES = 12  # more than the replica's database pool holds (ticker.db: 5 + 5)


class Faulty:
    """A web replica and the proxies between it and PostgreSQL and Redis."""

    def __init__(self, web, database: TcpProxy, bus: TcpProxy, mode: str):
        self.web, self.database, self.bus, self.mode = web, database, bus, mode
        self.url = web.url

    def cut(self, proxy: TcpProxy) -> None:
        """The dependency is gone: connections are refused from now on, open ones reset."""
        proxy.target = ("127.0.0.1", free_port())
        proxy.heal()
        proxy.reset()

    def mend(self, proxy: TcpProxy, target: tuple[str, int]) -> None:
        proxy.target = target
        proxy.heal()
        proxy.reset()


@pytest.fixture(scope="module", params=["gevent", "eventlet"])
def faulty(request, stack, processes, service_env, workdir, database):
    mode = request.param
    redis_address = (urlsplit(REDIS_URL).hostname, urlsplit(REDIS_URL).port)
    db_proxy, bus_proxy = TcpProxy(POSTGRES).start(), TcpProxy(redis_address).start()
    db_url = urlsplit(database)._replace(netloc=f"postgres@{db_proxy.url_host}").geturl()
    bus_url = urlsplit(REDIS_URL)._replace(netloc=bus_proxy.url_host).geturl()
    web = start_web(processes, service_env, workdir, f"web-faulty-{mode}", ASYNC_MODE=mode, DATABASE_URL=db_url,
                    REDIS_URL=bus_url, DATABASE_STATEMENT_TIMEOUT_SECS=STATEMENT_TIMEOUT_SECS,
                    DATABASE_POOL_TIMEOUT_SECS=POOL_TIMEOUT_SECS, DATABASE_CONNECT_TIMEOUT_SECS=CONNECT_TIMEOUT_SECS)
    yield Faulty(web, db_proxy, bus_proxy, mode)
    web.process.stop()
    db_proxy.stop()
    bus_proxy.stop()


def get(faulty: Faulty, path: str, token: str | None = None, **params) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(f"{faulty.url}{path}", params=params, headers=headers, timeout=30)


def assert_error(response: requests.Response, status: int, code: str) -> None:
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["Content-Type"] == "application/json", response.text[:300]
    body = response.json()
    assert set(body) == {"code", "message"} and body["code"] == code and body["message"], body
    if status == 503:
        assert int(response.headers["Retry-After"]) > 0


def test_every_route_answers_json_errors_when_a_dependency_is_gone(faulty, make_token):
    user, admin = make_token("http-errors"), make_token("http-admin", admin=True)
    assert_error(get(faulty, "/no/such/path"), 404, "not_found")
    wrong_method = requests.post(f"{faulty.url}/instruments", timeout=5)
    assert_error(wrong_method, 405, "method_not_allowed")
    assert "GET" in wrong_method.headers["Allow"]

    faulty.cut(faulty.database)
    try:
        assert_error(get(faulty, "/instruments", user, q="INFY"), 503, "database_unavailable")
        assert_error(get(faulty, "/kite/login/sim_key", admin), 503, "database_unavailable")
        assert_error(get(faulty, "/kite/callback", request_token="t", status="success"), 503, "database_unavailable")
        health = get(faulty, "/health")
        assert health.status_code == 503 and health.json()["checks"]["database"]["ok"] is False
        scraped = get(faulty, "/metrics", scope="cluster")
        assert scraped.status_code == 200 and samples(scraped.text)["ticker_cluster_database_up"] == {(): 0}
        assert get(faulty, "/ws/stats", admin).status_code == 200  # Redis only
    finally:
        faulty.mend(faulty.database, POSTGRES)

    faulty.cut(faulty.bus)
    try:
        assert_error(get(faulty, "/ws/stats", admin), 503, "bus_unavailable")
        health = get(faulty, "/health")
        assert health.status_code == 503 and health.json()["checks"]["redis"]["ok"] is False
        scraped = get(faulty, "/metrics", scope="cluster")
        assert scraped.status_code == 200 and samples(scraped.text)["ticker_cluster_redis_up"] == {(): 0}
    finally:
        faulty.mend(faulty.bus, (urlsplit(REDIS_URL).hostname, urlsplit(REDIS_URL).port))
    wait_for(lambda: get(faulty, "/instruments", user, q="INFY").status_code == 200, 15, "the database again")
    wait_for(lambda: get(faulty, "/ws/stats", admin).status_code == 200, 15, "Redis again")


def search_all_at_once(faulty: Faulty, token: str) -> tuple[list[threading.Thread], list[requests.Response]]:
    responses: list[requests.Response] = []

    def search() -> None:
        responses.append(get(faulty, "/instruments", token, q="INFY"))

    threads = [threading.Thread(target=search) for _ in range(CONCURRENT_SEARCHES)]
    for thread in threads:
        thread.start()
    return threads, responses


def test_a_black_holed_database_costs_a_request_a_bounded_wait_not_the_replica(faulty, make_token, database):
    user = make_token("blackhole")
    assert get(faulty, "/instruments", user, q="INFY").status_code == 200  # a pooled connection to the proxy
    token = tokens_of(database, "NSE", 1, skip=70)[0]
    client = RecordingClient().connect(faulty.url, user)
    try:
        assert client.call("subscribe", {"tokens": [token]})["tokens"] == [token]
        client.wait_for_ticks([token], count=1, timeout=15)

        faulty.database.blackhole(new=True)
        threads, responses = search_all_at_once(faulty, user)
        seen = len(client.ticks_for(token))
        # While every search waits on the silent database, the replica's clients go on.
        wait_for(lambda: len(client.ticks_for(token)) >= seen + 3, 15, "ticks while the database is silent")
        assert "server_time" in client.call("ping")
        assert any(thread.is_alive() for thread in threads), "the searches did not wait for the database"
        for thread in threads:
            thread.join(60)
    finally:
        client.close()
        faulty.mend(faulty.database, POSTGRES)
    codes = {response.json()["code"] for response in responses}
    assert len(responses) == CONCURRENT_SEARCHES and codes == {"database_unavailable", "server_busy"}, codes
    for response in responses:
        assert_error(response, 503, response.json()["code"])
    wait_for(lambda: get(faulty, "/instruments", user, q="INFY").status_code == 200, 15, "the database again")


def symbols_of(database: str, tokens: list[int]) -> list[str]:
    with engine_for(database).connect() as connection:
        rows = connection.execute(text("SELECT exchange || ':' || tradingsymbol FROM instruments "
                                       "WHERE instrument_token = ANY(:t) ORDER BY instrument_token"), {"t": tokens})
        return [symbol for (symbol,) in rows]


def subscribe(client: RecordingClient, tokens: list[int], names: list[str]) -> dict:
    reply = client.call("subscribe", {"tokens": tokens, "instruments": names})
    assert "error" not in reply, reply
    return reply


def test_lookups_stay_right_while_the_registry_mirror_is_lost_and_rebuilt(faulty, make_token, database, redis):
    """Redis lost the mirror: while another replica holds the rebuild, lookups are answered
    from PostgreSQL; then this replica rebuilds it without COPY, to the loader's fingerprint,
    in the background: no lookup waits for the rebuild."""
    by_token, by_name = tokens_of(database, "NSE", 2, skip=80), tokens_of(database, "NSE", 2, skip=90)
    names = symbols_of(database, by_name)
    client = RecordingClient().connect(faulty.url, make_token("mirror-lost"))
    other = "another replica"
    try:
        redis.delete(keys.REGISTRY_TOKENS, keys.REGISTRY_SYMBOLS, keys.REGISTRY_MIRRORED)
        redis.set(keys.REGISTRY_LOCK, other, ex=30)
        reply = subscribe(client, [by_token[0], 4_000_000_000], [names[0], "NSE:NO-SUCH-THING"])
        assert sorted(reply["tokens"]) == sorted([by_token[0], by_name[0]]), reply
        assert {(r["token"], r["code"]) for r in reply["rejected"]} == {
            (4_000_000_000, "unknown_token"), ("NSE:NO-SUCH-THING", "unknown_instrument")}

        redis.delete(keys.REGISTRY_LOCK)  # the other replica gave up: this one rebuilds it
        reply = subscribe(client, [by_token[1]], [names[1]])
        assert sorted(reply["tokens"]) == sorted([by_token[1], by_name[1]]) and not reply["rejected"], reply
        assert not client.events["error"], client.events["error"]
    finally:
        client.close()
        if redis.get(keys.REGISTRY_LOCK) == other:  # a failed test leaves no lock behind
            redis.delete(keys.REGISTRY_LOCK)
    # Rebuilt in the background: the subscribe that found it gone was answered from PostgreSQL.
    wait_for(lambda: redis.exists(keys.REGISTRY_TOKENS, keys.REGISTRY_SYMBOLS) == 2, 30, "the mirror rebuilt")
    with session_for(database) as session:
        loaders = fingerprint(copy_pairs(session.connection().connection.driver_connection.cursor()))
    assert redis.get(keys.REGISTRY_MIRRORED) == loaders


def test_beat_jobs_status_outlives_redis_restarted_empty(faulty, database, processes, workdir, redis):
    started = time.time()
    run_job(redis, database, "http_errors_test_job", lambda: "checked 3 things", 30)
    port = free_port()
    empty = start(processes, f"redis-empty-{faulty.mode}", ["redis-server", "--port", str(port), "--bind",
                  "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)], {}, workdir)
    wait_for(lambda: port_open(port), 10, "the empty Redis to listen")
    faulty.mend(faulty.bus, ("127.0.0.1", port))  # to the replica, Redis came back empty
    try:
        wait_for(lambda: get(faulty, "/health").json()["checks"]["redis"]["ok"], 15, "the replica to reach Redis")
        job = get(faulty, "/health").json()["checks"]["jobs"]["jobs"]["http_errors_test_job"]
        assert job["outcome"] == "ok" and job["detail"] == "checked 3 things" and job["last_run"] >= started - 1
        found = samples(get(faulty, "/metrics", scope="cluster").text)
        assert found["ticker_job_last_run_timestamp_seconds"][(("job", "http_errors_test_job"),)] >= started - 1
    finally:
        faulty.mend(faulty.bus, (urlsplit(REDIS_URL).hostname, urlsplit(REDIS_URL).port))
        empty.stop()


@pytest.fixture
def bare_app():
    """A Flask app with nothing but the error handlers, for failures no real route can be made
    to show on demand: a bug, and a Redis pool with no connection free."""
    app = Flask(__name__)
    http_errors.register(app)
    return app


def test_a_bug_is_a_500_internal_error_that_tells_the_client_nothing(bare_app, caplog):
    @bare_app.get("/bug")
    def bug():
        raise RuntimeError("the secret detail")

    response = bare_app.test_client().get("/bug")

    assert response.status_code == 500
    assert response.get_json() == {"code": "internal_error", "message": "the server could not handle this request"}
    logged = [r for r in caplog.records if r.name == "ticker.web.http_errors" and r.exc_info]
    assert logged and "the secret detail" in str(logged[0].exc_info[1])


@pytest.mark.parametrize("pool_class, options", [
    (WaitingConnectionPool, {"timeout": 0.1}),  # the service's pool: waits for a connection, then gives up
    (redis_lib.ConnectionPool, {}),  # refuses at once
], ids=["waiting", "plain"])
def test_a_redis_pool_with_no_connection_free_is_503_server_busy(bare_app, redis, pool_class, options):
    pool = pool_class.from_url(REDIS_URL, max_connections=1, **options)
    client = redis_lib.Redis(connection_pool=pool)
    held = pool.get_connection()

    @bare_app.get("/busy")
    def busy():
        return str(client.get("anything"))

    try:
        response = bare_app.test_client().get("/busy")
    finally:
        pool.release(held)
        pool.disconnect()
    assert response.status_code == 503 and response.get_json()["code"] == "server_busy"
    assert response.headers["Retry-After"] == str(http_errors.BUSY_RETRY_AFTER_SECS)


@pytest.mark.parametrize("path, params", [
    ("/instruments", {"q": "\x00"}), ("/instruments", {"q": "INF", "exchange": "\x00"}),
    ("/instruments", {"q": "INF", "segment": "N\x00"}), ("/kite/login/%00", {}),
    ("/kite/callback/%00", {"request_token": "x"}), ("/kite/callback", {"request_token": "x\x00"}),
    ("/instruments", {"q": "INF", "x\x00": "1"}),
])
def test_a_nul_in_a_path_or_query_is_a_bad_request_not_a_500(stack, make_token, path, params):
    response = requests.get(f"{stack['url']}{path}", params=params, timeout=10,
                            headers={"Authorization": f"Bearer {make_token('nul', admin=True)}"})
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "bad_request"
