"""Market-data entitlements: a JWT's `exchanges` claim limits what its connection receives
(subscribe, snapshots, search), a reauth narrows or widens it, and refusals are counted."""

from __future__ import annotations

import json
import time

import jwt as pyjwt
import pytest
import requests
from sqlalchemy import text

from tests.conftest import AUDIENCE, ISSUER
from tests.support.clients import RecordingClient
from tests.support.processes import wait_for
from tests.web.test_metrics import scrape
from ticker.bus import keys
from ticker.bus.demand import read_demand
from ticker.db import engine_for
from ticker.web.auth import verify
from ticker.web.entitlements import EVERYTHING, entitlements_from, metric_label
from ticker.web.errors import ClientError

pytestmark = pytest.mark.integration


# --- the claim, as pure logic -----------------------------------------------------------------

def test_no_claim_means_every_exchange_and_admin_overrides_the_claim():
    assert entitlements_from({"sub": "a"}, "exchanges") is EVERYTHING
    assert entitlements_from({"admin": True, "exchanges": []}, "exchanges") is EVERYTHING
    assert EVERYTHING.allows("MCX")


def test_a_list_allows_exactly_its_exchanges_and_an_empty_list_nothing():
    only_nse = entitlements_from({"exchanges": ["NSE", "BSE"]}, "exchanges")
    assert only_nse.allows("NSE") and only_nse.allows("BSE") and not only_nse.allows("NFO")
    assert not only_nse.allows("nse")  # Kite's codes, exactly
    nothing = entitlements_from({"exchanges": []}, "exchanges")
    assert not nothing.allows("NSE")
    assert entitlements_from({"markets": ["MCX"]}, "markets").allows("MCX")


@pytest.mark.parametrize("claim", ["NSE", ["NSE", 1], {"NSE": True}, None, 3, [["NSE"]], ["nse"], ["NSE "], [""]])
def test_a_claim_that_is_not_a_list_of_strings_is_refused(claim):
    with pytest.raises(ClientError) as refused:
        entitlements_from({"exchanges": claim}, "exchanges")
    assert refused.value.code == "token_entitlements_invalid"


def test_metric_labels_are_kite_exchanges_or_other():
    assert metric_label("NFO") == "NFO"
    assert metric_label("SOMETHING-NEW") == "other"


# --- against the running service -------------------------------------------------------------

def claims(user: str, **extra) -> dict:
    now = int(time.time())
    return {"sub": user, "iat": now, "nbf": now, "exp": now + 600, "aud": AUDIENCE, "iss": ISSUER,
            "type": "access", "jti": f"ent-{user}-{now}", "fresh": False, **extra}


@pytest.fixture
def mint(jwt_keys):
    key = jwt_keys[0].read_bytes()

    def mint(user: str, **extra) -> str:
        return pyjwt.encode(claims(user, **extra), key, algorithm="RS256")

    return mint


@pytest.fixture
def connect(stack, mint):
    clients = []

    def connect(user: str, **extra) -> RecordingClient:
        client = RecordingClient().connect(stack["url"], mint(user, **extra))
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close()


def instruments(database: str, exchange: str, count: int, skip: int) -> list[tuple[int, str]]:
    """(token, "EXCHANGE:TRADINGSYMBOL") of tradable instruments of an exchange."""
    with engine_for(database).connect() as connection:
        rows = connection.execute(text(
            "SELECT instrument_token, exchange || ':' || tradingsymbol FROM instruments "
            "WHERE exchange = :e AND segment <> 'INDICES' ORDER BY 1 LIMIT :n OFFSET :o"),
            {"e": exchange, "n": count, "o": skip})
        return [(token, name) for token, name in rows]


def tokens(database: str, exchange: str, count: int, skip: int) -> list[int]:
    return [token for token, _ in instruments(database, exchange, count, skip)]


def codes(reply: dict) -> dict:
    return {r["token"]: r["code"] for r in reply["rejected"]}


def demanded() -> set[int]:
    from tests.conftest import REDIS_URL
    from ticker.bus.connection import redis_client

    return set().union(*read_demand(redis_client(REDIS_URL)))


def refusals(url: str, exchange: str, event: str) -> float:
    series = scrape(url, scope="replica").get("ticker_entitlement_refusals_total", {})
    return series.get((("event", event), ("exchange", exchange)), 0.0)


def test_only_entitled_tokens_are_accepted_streamed_and_counted(stack, connect, database):
    nse, nfo, bse = tokens(database, "NSE", 1, 300), tokens(database, "NFO", 1, 300), tokens(database, "BSE", 1, 300)
    before = refusals(stack["url"], "NFO", "subscribe")
    client = connect("ent-nse", exchanges=["NSE"])

    reply = client.call("subscribe", {"tokens": nse + nfo + bse, "mode": "ltp"})

    assert reply["tokens"] == nse and reply["total"] == 1, reply
    assert codes(reply) == {nfo[0]: "not_entitled", bse[0]: "not_entitled"}, reply
    assert not {nfo[0], bse[0]} & demanded()  # nothing asked upstream on its behalf
    # The others stream (an unrestricted client gets them); the restricted one never does.
    other = connect("ent-all")
    assert other.call("subscribe", {"tokens": nfo + bse, "mode": "ltp"})["tokens"] == nfo + bse
    other.wait_for_ticks(nfo + bse, count=2)
    client.wait_for_ticks(nse, count=2)
    assert not client.ticks_for(nfo[0]) and not client.ticks_for(bse[0])
    assert refusals(stack["url"], "NFO", "subscribe") >= before + 1


def test_instruments_named_by_symbol_obey_the_claim(connect, database):
    (nse_token, nse_name), = instruments(database, "NSE", 1, 310)
    (_, nfo_name), = instruments(database, "NFO", 1, 310)
    client = connect("ent-symbols", exchanges=["NSE"])

    reply = client.call("subscribe", {"instruments": [nse_name, nfo_name], "mode": "ltp"})

    assert reply["tokens"] == [nse_token], reply
    assert codes(reply) == {nfo_name: "not_entitled"}, reply


def test_no_claim_and_admin_see_everything_and_an_empty_list_nothing(connect, database):
    wanted = tokens(database, "NSE", 1, 320) + tokens(database, "NFO", 1, 320) + tokens(database, "MCX", 1, 320)
    for client in (connect("ent-none"), connect("ent-admin", admin=True, exchanges=["NSE"])):
        reply = client.call("subscribe", {"tokens": wanted, "mode": "ltp"})
        assert reply["tokens"] == wanted and not reply["rejected"], reply
    reply = connect("ent-empty", exchanges=[]).call("subscribe", {"tokens": wanted, "mode": "ltp"})
    assert reply["tokens"] == [] and set(codes(reply).values()) == {"not_entitled"}, reply


def test_a_malformed_claim_is_refused_at_connect_and_counted(stack, mint):
    def rejected() -> float:
        series = scrape(stack["url"], scope="replica").get("ticker_connections_rejected_total", {})
        return series.get((("reason", "token_entitlements_invalid"),), 0.0)

    before = rejected()
    error = RecordingClient().try_connect(stack["url"], auth={"token": mint("ent-bad", exchanges="NSE")})
    assert error["code"] == "token_entitlements_invalid", error
    assert "exchanges" in error["message"]
    assert rejected() == before + 1


def test_a_narrower_reauth_drops_what_is_no_longer_allowed_and_a_wider_one_allows_more(stack, connect, mint,
                                                                                       database):
    nse, nfo = tokens(database, "NSE", 1, 330), tokens(database, "NFO", 1, 330)
    client = connect("ent-reauth", exchanges=["NSE", "NFO"])
    assert client.call("subscribe", {"tokens": nse + nfo, "mode": "ltp"})["tokens"] == nse + nfo
    client.wait_for_ticks(nse + nfo, count=1)
    before = refusals(stack["url"], "NFO", "reauth")

    reply = client.call("reauth", {"token": mint("ent-reauth", exchanges=["NSE"])})

    assert "error" not in reply, reply
    dropped = wait_for(lambda: client.events["unsubscribed"], 5, "unsubscribed")[0]
    assert dropped == {"tokens": nfo, "total": 1, "reason": "not_entitled"}, dropped
    seen = len(client.ticks_for(nfo[0]))  # every frame before `unsubscribed` is recorded by now
    assert nfo[0] not in demanded()  # this was its only holder
    client.wait_for_ticks(nse, count=len(client.ticks_for(nse[0])) + 3)
    assert len(client.ticks_for(nfo[0])) == seen
    assert refusals(stack["url"], "NFO", "reauth") == before + 1
    assert codes(client.call("subscribe", {"tokens": nfo, "mode": "ltp"})) == {nfo[0]: "not_entitled"}

    client.call("reauth", {"token": mint("ent-reauth", exchanges=["NSE", "NFO"])})
    assert client.call("subscribe", {"tokens": nfo, "mode": "ltp"})["tokens"] == nfo


def test_a_malformed_claim_in_a_reauth_is_refused_and_changes_nothing(connect, mint, database):
    nfo = tokens(database, "NFO", 1, 340)
    client = connect("ent-reauth-bad", exchanges=["NFO"])
    client.call("subscribe", {"tokens": nfo, "mode": "ltp"})

    reply = client.call("reauth", {"token": mint("ent-reauth-bad", exchanges=[1])})

    assert reply["error"]["code"] == "token_entitlements_invalid", reply
    assert client.call("subscribe", {"tokens": nfo, "mode": "quote"})["tokens"] == nfo


def test_search_shows_only_entitled_exchanges(stack, mint):
    def search(token: str) -> list[str]:
        response = requests.get(f"{stack['url']}/instruments", params={"q": "INFY", "limit": 100},
                                headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert response.status_code == 200, response.text
        return [row["exchange"] for row in response.json()["instruments"]]

    everything = search(mint("ent-search-all"))
    assert {"NSE", "BSE", "NFO"} <= set(everything), everything
    assert set(search(mint("ent-search", exchanges=["NSE", "BSE"]))) == {"NSE", "BSE"}
    assert search(mint("ent-search-none", exchanges=[])) == []
    assert set(search(mint("ent-search-admin", admin=True, exchanges=[]))) == set(everything)
    bad = requests.get(f"{stack['url']}/instruments", params={"q": "INFY"}, timeout=5,
                       headers={"Authorization": f"Bearer {mint('ent-search-bad', exchanges='NSE')}"})
    assert bad.status_code == 401 and bad.json()["code"] == "token_entitlements_invalid", bad.text


def test_after_a_registry_reload_the_registry_says_which_exchange_a_held_token_is(connect, database, redis):
    (a, a_name), (b, b_name), (nse, _) = instruments(database, "NSE", 3, 350)
    nfo = tokens(database, "NFO", 1, 350)
    streaming = connect("ent-reload-all")  # both targets have a last tick to snapshot
    streaming.call("subscribe", {"tokens": [nse, *nfo], "mode": "ltp"})
    streaming.wait_for_ticks([nse, *nfo])
    client = connect("ent-reload", exchanges=["NSE"])
    assert client.call("subscribe", {"instruments": [a_name, b_name], "mode": "ltp"})["tokens"] == [a, b]

    # The reload moved one name to a token the registry holds as NFO: not followed there.
    notice = {"renumbered": {str(a): nfo[0], str(b): nse}, "removed": []}
    redis.publish(keys.REGISTRY_RELOADED, json.dumps(notice))

    moved = wait_for(lambda: [e for e in client.events["subscribed"] if e.get("reason")], 5, "a renumbering")[0]
    assert moved["tokens"] == [nse] and moved["total"] == 1, moved
    assert codes(moved) == {nfo[0]: "not_entitled"}, moved
    assert client.events["unsubscribed"] == [{"tokens": [a, b], "total": 0, "reason": "instrument_renumbered"}]
    client.wait_for_ticks([nse], count=3)  # the snapshot of the renumbering, then live ticks
    assert client.ticks_for(nse)[0]["snapshot"] is True
    assert not client.ticks_for(nfo[0])


def test_the_development_mint_command_puts_the_claim_in_the_token(app):
    result = app.test_cli_runner().invoke(args=["jwt", "mint", "--user", "carol", "--exchanges", "NSE, BFO"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        claims = verify(result.output.strip())
    assert claims["sub"] == "carol" and claims["exchanges"] == ["NSE", "BFO"]
    assert entitlements_from(claims, "exchanges").allows("BFO")
    plain = app.test_cli_runner().invoke(args=["jwt", "mint", "--user", "dave"]).output.strip()
    with app.app_context():
        assert "exchanges" not in verify(plain)
