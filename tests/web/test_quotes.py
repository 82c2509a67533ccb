"""Market quotes (`/quote`, `/quote/ohlc`, `/quote/ltp`) through the official KiteConnect client,
against the whole stack: simulator → shard worker → Redis → web replica."""

from __future__ import annotations

import datetime
import re
import statistics
import time
from urllib.parse import urlsplit

import pytest
import requests
from kiteconnect import KiteConnect
from kiteconnect import exceptions as kite_errors
from sqlalchemy import text

from tests.support.processes import wait_for
from tests.support.proxy import TcpProxy
from tests.web.webproc import start_web
from ticker.bus import keys
from ticker.db import engine_for

pytestmark = pytest.mark.integration


def instruments(database: str, segment: str, count: int, skip: int) -> list[tuple[int, str]]:
    """(token, "EXCHANGE:TRADINGSYMBOL") of `count` instruments of a segment, after `skip`
    (each test takes its own, so none of them was streamed before it)."""
    with engine_for(database).connect() as connection:
        rows = connection.execute(text(
            "SELECT instrument_token, exchange || ':' || tradingsymbol FROM instruments WHERE segment = :s "
            "ORDER BY 1 OFFSET :skip LIMIT :n"), {"s": segment, "n": count, "skip": skip})
        return [(token, name) for token, name in rows]


def kite(url: str, jwt: str) -> KiteConnect:
    client = KiteConnect(api_key="any-key", root=url)
    client.set_access_token(jwt)
    return client


def raw(url: str, path: str, jwt: str, names: list[str]) -> requests.Response:
    """The same request as KiteConnect's, to read what the official client drops."""
    return requests.get(f"{url}{path}", params={"i": names}, headers={"Authorization": f"token k:{jwt}"}, timeout=30)


def sent_prices(sim: str, token: int) -> set[float]:
    return {tick["last_price"] for tick in requests.get(f"{sim}/_sim/sent", params={"token": token}, timeout=5).json()}


def test_quote_of_instruments_nobody_streamed_subscribes_them_and_answers_kites_shape(stack, sim, database, redis,
                                                                                    make_token):
    (token, name), (other, other_name) = instruments(database, "NSE", 2, skip=200)
    assert redis.hget(keys.ASSIGNED_SLOT, token) is None and redis.hget(keys.LAST_TICKS, token) is None
    client = kite(stack["url"], make_token("quoter"))

    quotes = client.quote([name, str(other)])  # by name and by instrument token, as Kite allows

    assert set(quotes) == {name, str(other)}
    quote = quotes[name]
    assert quote["instrument_token"] == token and quote["last_price"] in sent_prices(sim, token)
    assert isinstance(quote["timestamp"], datetime.datetime)  # Kite's "YYYY-MM-DD HH:MM:SS", parsed by the client
    assert isinstance(quote["last_trade_time"], datetime.datetime)
    assert set(quote) >= {"last_quantity", "buy_quantity", "sell_quantity", "volume", "average_price", "oi",
                          "oi_day_high", "oi_day_low", "net_change", "lower_circuit_limit", "upper_circuit_limit"}
    assert quote["ohlc"]["low"] <= quote["last_price"] <= quote["ohlc"]["high"]
    assert len(quote["depth"]["buy"]) == len(quote["depth"]["sell"]) == 5
    assert set(quote["depth"]["buy"][0]) == {"price", "quantity", "orders"}
    assert quotes[str(other)]["instrument_token"] == other
    assert redis.hget(keys.ASSIGNED_MODE, token) == "full"  # streamed now, in the mode a quote needs


def test_the_reply_says_which_instruments_were_subscribed_for_it(stack, database, make_token):
    jwt = make_token("quoter")
    (token, name), (_, streamed) = instruments(database, "NSE", 2, skip=210)
    kite(stack["url"], jwt).ltp([streamed])

    first = raw(stack["url"], "/quote/ltp", jwt, [name, streamed]).json()
    again = raw(stack["url"], "/quote/ltp", jwt, [name, streamed]).json()

    assert first["status"] == "success" and set(first["data"]) == {name, streamed}
    assert first["subscribed"] == [name] and first["omitted"] == {}
    assert again["subscribed"] == [] and again["data"][name]["instrument_token"] == token


def test_ltp_and_ohlc_answer_their_own_shapes(stack, sim, database, make_token):
    (token, name), (other, _) = instruments(database, "NSE", 2, skip=220)
    client = kite(stack["url"], make_token("quoter"))

    ltp = client.ltp(name, str(other))
    ohlc = client.ohlc([name])

    assert set(ltp[name]) == {"instrument_token", "last_price"} and ltp[name]["instrument_token"] == token
    assert ltp[name]["last_price"] in sent_prices(sim, token)
    assert set(ltp[str(other)]) == {"instrument_token", "last_price"}
    assert set(ohlc[name]) == {"instrument_token", "last_price", "ohlc"}
    assert set(ohlc[name]["ohlc"]) == {"open", "high", "low", "close"}


def test_instruments_outside_the_entitlements_are_refused(stack, database, make_token):
    (_, nse), = instruments(database, "NSE", 1, skip=230)
    (bse_token, bse), = instruments(database, "BSE", 1, skip=5)
    jwt = make_token("nse-only", exchanges=["NSE"])

    with pytest.raises(kite_errors.PermissionException) as refused:
        kite(stack["url"], jwt).quote([bse])
    mixed = raw(stack["url"], "/quote", jwt, [nse, str(bse_token)]).json()

    assert refused.value.code == 403 and bse in str(refused.value)
    assert set(mixed["data"]) == {nse} and mixed["omitted"] == {str(bse_token): "not_entitled"}


def test_bad_tokens_are_kites_token_exception(stack, database, make_token):
    (_, name), = instruments(database, "NSE", 1, skip=240)
    expired = []
    client = kite(stack["url"], make_token("late", ttl=-120))
    client.set_session_expiry_hook(lambda: expired.append(True))

    for bad in (client, kite(stack["url"], "not-a-jwt"), KiteConnect(api_key="k", root=stack["url"])):
        with pytest.raises(kite_errors.TokenException) as refused:
            bad.ltp([name])
        assert refused.value.code == 403
    assert expired == [True]  # the official client's hook for a session to renew
    bearer = requests.get(f"{stack['url']}/quote/ltp", params={"i": name}, timeout=10,
                          headers={"Authorization": f"Bearer {make_token('bearer')}"})
    assert bearer.status_code == 200 and name in bearer.json()["data"]


def test_bad_input_is_kites_input_exception_and_unknown_instruments_are_left_out(stack, make_token):
    client = kite(stack["url"], make_token("quoter"))

    for call, names in ((client.quote, [f"NSE:X{n}" for n in range(501)]),
                        (client.ltp, [f"NSE:X{n}" for n in range(1001)]),
                        (client.ohlc, ["INFY"]), (client.ltp, ["0"]), (client.quote, []), (client.ltp, ["NSE:A\x00"])):
        with pytest.raises(kite_errors.InputException) as refused:
            call(names)
        assert refused.value.code == 400
    assert client.ltp(["NSE:NO-SUCH-THING", "4294967295"]) == {}  # as Kite: omitted, not an error
    assert len(client.ohlc([f"NSE:X{n}" for n in range(1000)])) == 0  # 1000 is within the OHLC limit


def test_an_on_demand_subscription_is_released_after_the_hold_and_the_grace(stack, database, redis, make_token):
    (token, name), = instruments(database, "NSE", 1, skip=250)
    kite(stack["url"], make_token("quoter")).ltp([name])
    assert redis.hget(keys.ASSIGNED_SLOT, token) is not None

    # QUOTE_HOLD_SECS (2 here) after the last quote, then UNSUBSCRIBE_GRACE_SECS (2) upstream.
    wait_for(lambda: redis.hget(keys.ASSIGNED_SLOT, token) is None, 20, "the on-demand subscription to go")


def test_polling_an_instrument_keeps_it_streamed(stack, database, redis, make_token):
    """A quote answered from a stream kept only by the upstream's grace period holds it again:
    polled more often than QUOTE_HOLD_SECS + UNSUBSCRIBE_GRACE_SECS (2 + 2 s here), an instrument
    is never dropped and subscribed again."""
    (token, name), = instruments(database, "NSE", 1, skip=260)
    jwt = make_token("poller")
    assert raw(stack["url"], "/quote/ltp", jwt, [name]).json()["subscribed"] == [name]
    for _ in range(4):
        time.sleep(3)  # past the hold: the next quote finds the stream in its grace period
        reply = raw(stack["url"], "/quote/ltp", jwt, [name]).json()
        assert reply["subscribed"] == [] and reply["data"][name]["instrument_token"] == token, reply


@pytest.fixture(scope="module")
def cut_off(stack, processes, service_env, workdir):
    """A web replica whose Redis is behind a proxy the test can cut; under eventlet, where the
    stack's replica runs gevent (both must serve quotes); and too impatient for any first tick
    (QUOTE_WAIT_SECS)."""
    from tests.conftest import REDIS_URL

    address = (urlsplit(REDIS_URL).hostname, urlsplit(REDIS_URL).port)
    proxy = TcpProxy(address).start()
    web = start_web(processes, service_env, workdir, "web-quotes-redis", ASYNC_MODE="eventlet", QUOTE_WAIT_SECS="0",
                    REDIS_URL=urlsplit(REDIS_URL)._replace(netloc=proxy.url_host).geturl())
    yield web, proxy, address
    web.process.stop()
    proxy.stop()


def test_redis_down_is_a_network_exception_with_a_code_counted_in_metrics(cut_off, database, make_token):
    web, proxy, address = cut_off
    (_, name), = instruments(database, "NSE", 1, skip=260)
    client = kite(web.url, make_token("quoter"))
    wait_for(lambda: raw(web.url, "/quote/ltp", make_token("quoter"), [name]).ok, 10, "a quote")
    proxy.target = ("127.0.0.1", 1)  # nothing listens there: Redis is gone
    proxy.reset()
    try:
        with pytest.raises(kite_errors.NetworkException) as failed:
            client.ltp([name])
        response = raw(web.url, "/quote/ltp", make_token("quoter"), [name])
    finally:
        proxy.target = address
        proxy.reset()
    assert failed.value.code == 503
    assert response.json()["code"] == "bus_unavailable" and int(response.headers["Retry-After"]) > 0
    scraped = requests.get(f"{web.url}/metrics", timeout=10).text
    assert 'ticker_http_errors_total{reason="bus_unavailable"}' in scraped
    wait_for(lambda: raw(web.url, "/quote/ltp", make_token("quoter"), [name]).ok, 20, "quotes after Redis is back")


def test_the_example_in_the_api_doc_runs_as_written(stack, make_token):
    from tests.support.processes import ROOT

    section = (ROOT / "docs" / "API.md").read_text().split("\n## Market quotes", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1).replace("http://127.0.0.1:5000", stack["url"])
    scope = {"JWT": make_token("doc-example")}
    exec(code, scope)  # noqa: S102  (the documentation's own example)

    assert scope["kite"].ltp("NSE:INFY")["NSE:INFY"]["last_price"] > 0


def test_a_first_tick_too_late_is_pending_and_the_next_quote_answers(cut_off, database, make_token):
    web, _, _ = cut_off
    (token, name), (_, other) = instruments(database, "NSE", 2, skip=270)
    client = kite(web.url, make_token("quoter"))

    with pytest.raises(kite_errors.NetworkException) as pending:
        client.ltp([name])  # subscribed on demand (under eventlet), but this replica waits for no tick
    assert pending.value.code == 504 and name in str(pending.value)
    wait_for(lambda: raw(web.url, "/quote/ltp", make_token("quoter"), [name]).ok, 10,
             "the quote once the instrument streams")
    mixed = raw(web.url, "/quote/ltp", make_token("quoter"), [name, other, "NSE:NO-SUCH-THING"])

    assert mixed.status_code == 200 and mixed.json()["data"][name]["instrument_token"] == token
    assert mixed.json()["omitted"] == {other: "pending", "NSE:NO-SUCH-THING": "unknown_instrument"}
    assert client.ohlc([f"NSE:X{n}" for n in range(1000)]) == {}  # Kite's longest URL gets through eventlet


def test_quotes_on_a_kept_alive_connection_wait_for_no_delayed_ack(stack, database, make_token):
    # gevent sent each response in two writes; with Nagle's algorithm the second waited for
    # the client's delayed ACK, at least 40 ms on Linux, on every request of a kept-alive
    # connection such as KiteConnect's session. The bound leaves a loaded machine 35 ms for
    # a quote the replica makes in about one.
    (_, name), = instruments(database, "NSE", 1, skip=280)
    client = kite(stack["url"], make_token("quoter"))
    client.ltp([name])  # streamed from now on
    took = []
    for _ in range(15):
        started = time.perf_counter()
        client.ltp([name])
        took.append(time.perf_counter() - started)
    assert statistics.median(took) < 0.035, took


def test_a_request_line_too_long_for_the_server_is_kites_input_exception(stack, cut_off, make_token):
    """The server refuses a request line longer than it reads before any route: in JSON, so
    KiteConnect raises InputException rather than failing to parse an empty body (gevent: the
    stack's replica; eventlet: the cut-off one)."""
    names = [f"NSE:{'X' * 60}{n}" for n in range(4000)]
    for url in (stack["url"], cut_off[0].url):
        reply = raw(url, "/quote/ltp", make_token("long-line"), names)
        assert reply.status_code == 414 and reply.json()["code"] == "request_too_large", reply.text
        with pytest.raises(kite_errors.InputException):
            kite(url, make_token("long-line")).ltp(names)
