"""GET /instruments: the search box's lookup, authenticated, with clear errors."""

from __future__ import annotations

import pytest
import requests

pytestmark = pytest.mark.integration


def get(stack, token: str | None, **params) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(f"{stack['url']}/instruments", params=params, headers=headers, timeout=10)


def test_search_finds_the_symbol_first_then_its_derivatives(stack, make_token):
    reply = get(stack, make_token(), q="reliance", limit=5)
    assert reply.status_code == 200
    found = reply.json()["instruments"]
    assert found[0]["tradingsymbol"] == "RELIANCE" and len(found) == 5
    assert all(row["tradingsymbol"].startswith("RELIANCE") or row["name"].upper().startswith("RELIANCE")
               for row in found)
    assert {"instrument_token", "exchange", "segment", "lot_size", "tick_size", "expiry"} <= set(found[0])


def test_filters_by_exchange_segment_and_exchange_prefix(stack, make_token):
    token = make_token()
    nfo = get(stack, token, q="NIFTY", exchange="NFO", segment="NFO-OPT", limit=20).json()["instruments"]
    assert nfo and all(row["exchange"] == "NFO" and row["segment"] == "NFO-OPT" for row in nfo)
    bse = get(stack, token, q="BSE:RELIANCE").json()["instruments"]
    assert bse[0]["symbol"] == "BSE:RELIANCE"


@pytest.mark.parametrize(("params", "status", "code"), [
    ({"q": "INFY"}, 401, "auth_required"),
    ({}, 400, "bad_request"),
    ({"q": "INFY", "limit": "0"}, 400, "bad_request"),
    ({"q": "INFY", "limit": "abc"}, 400, "bad_request"),
    ({"q": "X" * 65}, 400, "bad_request"),
])
def test_bad_requests_get_a_code(stack, make_token, params, status, code):
    token = None if status == 401 else make_token()
    reply = get(stack, token, **params)
    assert (reply.status_code, reply.json()["code"]) == (status, code)


def test_wildcards_in_the_query_are_literal(stack, make_token):
    assert get(stack, make_token(), q="%").json()["instruments"] == []
