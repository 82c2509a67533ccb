"""A real instruments dump's quirks, loaded into PostgreSQL and the Redis mirror: names with
colons, spaces, `&` and leading digits, empty names, one symbol on several exchanges. Each is
found by name (as `subscribe` resolves it) and by search, whole or by a word inside."""

from __future__ import annotations

import pytest

from tests.conftest import DATABASE_URL
from ticker.db import session_for
from ticker.registry import migrate
from ticker.registry.dump import COLUMNS
from ticker.registry.instruments import Registry, replace_from_dump, search
from ticker.registry.mirror import MirrorUpdate
from ticker.web.requests import parse_subscribe

pytestmark = pytest.mark.integration

# Rows as Kite's dump has them (https://kite.trade/docs/connect/v3/market-quotes/#instruments).
DUMP = [",".join(COLUMNS)] + [
    "265,1,BSE SENSEX SIXTY 65:35,,0,,0,0.0,0,EQ,INDICES,BSE",
    "256265,1001,NIFTY 50,NIFTY 50,0,,0,0.0,0,EQ,INDICES,NSE",
    "519937,2031,M&M,MAHINDRA & MAHINDRA,0,,0,0.05,1,EQ,NSE,NSE",
    "134657,526,M&M,MAHINDRA & MAHINDRA,0,,0,0.05,1,EQ,BSE,BSE",
    "121345,474,3MINDIA,3M INDIA,0,,0,5.0,1,EQ,NSE,NSE",
    "2714625,10604,BHARTIARTL,BHARTI AIRTEL,0,,0,0.1,1,EQ,NSE,NSE",
]
NAMES = {
    "BSE:BSE SENSEX SIXTY 65:35": 265, "NSE:NIFTY 50": 256265, "NSE:M&M": 519937, "BSE:M&M": 134657,
    "NSE:3MINDIA": 121345,
}


@pytest.fixture(scope="module")
def quirks(private_redis) -> str:
    url = migrate.recreate_database(DATABASE_URL + "_quirks")
    mirror = MirrorUpdate(private_redis)
    with session_for(url) as session:
        report = replace_from_dump(session, [line + "\n" for line in DUMP], mirror)
    mirror.finish(report.symbols, report.fingerprint)
    assert report.rows == len(DUMP) - 1 and not report.bad_rows
    return url


@pytest.mark.parametrize("mirrored", [True, False], ids=["mirror", "postgresql"])
def test_every_quirky_name_resolves_to_its_token(quirks, private_redis, mirrored):
    asked = parse_subscribe({"instruments": [n.lower() for n in NAMES]}, limit=50).instruments
    registry = Registry(private_redis, lambda: session_for(quirks))
    if not mirrored:
        registry._mirrored = lambda: False  # as while a lost mirror is rebuilt

    assert registry.resolve(asked) == list(NAMES.values())


@pytest.mark.parametrize(("q", "first"), [
    ("SENSEX SIXTY", "BSE:BSE SENSEX SIXTY 65:35"),  # a word inside the symbol
    ("65:35", "BSE:BSE SENSEX SIXTY 65:35"),
    ("BSE:SENSEX", "BSE:BSE SENSEX SIXTY 65:35"),
    ("nifty 50", "NSE:NIFTY 50"),
    ("m&m", "BSE:M&M"),
    ("MAHINDRA", "BSE:M&M"),
    ("3m", "NSE:3MINDIA"),
    ("india", "NSE:3MINDIA"),  # a word inside the name
    ("AIRTEL", "NSE:BHARTIARTL"),
    ("121345", "NSE:3MINDIA"),  # a token number
])
def test_search_finds_quirky_instruments(quirks, q, first):
    with session_for(quirks) as session:
        found = [row["symbol"] for row in search(session, q)]

    assert found and found[0] == first, found


def test_search_puts_the_start_of_a_symbol_before_a_word_inside(quirks):
    with session_for(quirks) as session:
        found = [row["symbol"] for row in search(session, "M")]

    assert found[:3] == ["BSE:M&M", "NSE:M&M", "NSE:3MINDIA"]
