"""A web replica rebuilds the registry's Redis mirror with a plain query (its psycopg2 refuses
COPY) and must name the registry exactly as the loader's COPY does."""

from __future__ import annotations

import threading

from sqlalchemy import insert

from ticker.bus import keys
from ticker.db import session_for
from ticker.registry.instruments import Registry
from ticker.registry.mirror import copy_pairs, fingerprint, parse_pairs, query_pairs
from ticker.registry.models import Instrument

# Symbols COPY's text format escapes (backslash, tab, newline, ...) or writes as they are.
AWKWARD = ["BACK\\SLASH", "TAB\tBED", "NEW\nLINE", "CR\rLF", "BELL\b\f\v", "CTRL\x01\x1f", "CAFÉ-Ω", r"\N", "PLAIN"]


def test_the_plain_query_gives_the_pairs_exactly_as_copy_does(database):
    first = 4_100_000_000  # beyond any token the simulator lists
    rows = [{"instrument_token": first + n, "exchange_token": n, "tradingsymbol": symbol, "name": "", "last_price": 0,
             "strike": 0, "tick_size": 0.05, "lot_size": 1, "instrument_type": "EQ", "segment": "NSE",
             "exchange": "NSE"} for n, symbol in enumerate(AWKWARD)]
    with session_for(database) as session:
        session.execute(insert(Instrument), rows)
        try:
            by_copy = copy_pairs(session.connection().connection.driver_connection.cursor())
            by_query = query_pairs(session)
        finally:
            session.rollback()

    assert by_query == by_copy
    assert fingerprint(by_query) == fingerprint(by_copy)
    pairs = parse_pairs(by_query)
    assert [pairs[first + n] for n in range(len(AWKWARD))] == [f"NSE:{symbol}" for symbol in AWKWARD]


def test_a_rebuild_in_the_background_releases_the_lock_it_was_handed(database, private_redis):
    """A replica takes the rebuild lock in the greenlet whose lookup found the mirror gone and
    rebuilds in another one (here a thread): the lock must be released when the rebuild is
    done, not held until it expires (which also ended the rebuild in a traceback)."""
    done = threading.Event()

    def spawn(rebuild):
        def run():
            try:
                rebuild()
            finally:
                done.set()

        threading.Thread(target=run).start()

    private_redis.delete(keys.REGISTRY_TOKENS, keys.REGISTRY_LOCK)
    Registry(private_redis, lambda: session_for(database), spawn=spawn).known([1])
    assert done.wait(30)
    assert not private_redis.exists(keys.REGISTRY_LOCK)
