"""The quote cache's on-demand holds and its wait for first ticks (ticker.web.quotes.QuoteCache),
against a real Redis server of the module's own."""

from __future__ import annotations

import threading

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ticker.bus import keys
from ticker.bus.demand import ReplicaDemand
from ticker.bus.ticks import encode
from ticker.web.quotes import QuoteCache


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def cache(private_redis):
    private_redis.flushdb()
    clock = Clock()
    cache = QuoteCache(private_redis, ReplicaDemand(private_redis, "quotes-test"), hold_secs=10, clock=clock)
    cache.clock_at = clock
    return cache


def demand(client) -> dict[str, str]:
    return client.hgetall(keys.demand_of("quotes-test"))


def test_a_hold_is_demand_until_no_quote_refreshed_it_for_the_hold(cache, private_redis):
    cache.hold([11, 12], "full")
    cache.hold([11], "ltp")  # a poorer mode does not downgrade the hold
    assert demand(private_redis) == {"11": "full", "12": "full"}
    cache.clock_at.now += 6
    private_redis.hset(keys.ASSIGNED_MODE, 11, "full")
    private_redis.hset(keys.LAST_TICKS, 11, encode({"mode": "full", "instrument_token": 11, "last_price": 1.0}))
    ready, _ = cache.ready(cache.last_ticks([11]), [11], "quote")  # a quote from the stream refreshes the hold
    assert list(ready) == [11]
    cache.clock_at.now += 6

    assert cache.release() == [12]
    assert demand(private_redis) == {"11": "full"}
    cache.clock_at.now += 10
    assert cache.release() == [11] and demand(private_redis) == {}


def test_a_hold_moves_to_a_richer_mode_counting_the_token_once(cache, private_redis):
    cache.hold([21], "ltp")
    cache.hold([21], "full")
    assert demand(private_redis) == {"21": "full"} and dict(cache.demand.counts[21]) == {"full": 1}


def test_a_tick_is_ready_only_when_streamed_in_a_rich_enough_mode(cache, private_redis):
    private_redis.hset(keys.LAST_TICKS, 31, encode({"mode": "quote", "instrument_token": 31, "last_price": 2.0,
                                                    "epoch": 1, "seq": 4}))
    private_redis.hset(keys.ASSIGNED_MODE, 31, "quote")
    assert list(cache.ready(cache.last_ticks([31]), [31], "ohlc")[0]) == [31]
    ready, stale = cache.ready(cache.last_ticks([31]), [31], "quote")  # a full quote needs depth
    assert ready == {} and stale == {31: (1, 4)}
    private_redis.hdel(keys.ASSIGNED_MODE, 31)  # nobody streams it any more: its last tick may be old
    assert cache.ready(cache.last_ticks([31]), [31], "ltp")[0] == {}


def test_subscribe_waits_for_a_newer_tick_and_gives_up_at_the_deadline(cache, private_redis):
    old = {"mode": "full", "instrument_token": 41, "last_price": 3.0, "epoch": 1, "seq": 7}
    private_redis.hset(keys.LAST_TICKS, 41, encode(old))
    timer = threading.Timer(0.2, lambda: private_redis.hset(keys.LAST_TICKS, 41, encode({**old, "seq": 8})))
    timer.start()

    arrived = cache.subscribe([41, 42], "quote", {41: (1, 7)}, wait_secs=1.0)

    assert list(arrived) == [41] and arrived[41].position == (1, 8)  # 42 never ticked: left for `pending`
    assert demand(private_redis) == {"41": "full", "42": "full"}


def test_a_hold_redis_refused_holds_nothing(cache, private_redis):
    cache.demand.redis = redis.Redis(port=1, retry=Retry(NoBackoff(), 0))  # nothing listens there
    with pytest.raises(redis.ConnectionError):
        cache.hold([51], "ltp")
    assert cache.held == {} and dict(cache.demand.counts) == {}


def test_one_lookup_resolves_names_and_tokens_and_reads_their_ticks(cache, private_redis):
    assert cache.lookup(["NSE:INFY"], [408065]) is None  # no registry mirror: the registry answers instead
    private_redis.hset(keys.REGISTRY_TOKENS, mapping={408065: "NSE:INFY", 2885: "NSE:A,B C"})
    private_redis.hset(keys.REGISTRY_SYMBOLS, mapping={"NSE:INFY": 408065, "NSE:A,B C": 2885})
    tick = encode({"mode": "ltp", "instrument_token": 2885, "last_price": 1.5})
    private_redis.hset(keys.LAST_TICKS, 2885, tick)
    private_redis.hset(keys.ASSIGNED_MODE, 2885, "ltp")

    found = cache.lookup(["NSE:INFY", "NSE:NOPE", "NSE:A,B C"], [2885, 7])

    assert found.tokens == [408065, None, 2885] and found.names == ["NSE:A,B C", None]
    assert found.found == {408065: (None, None), 2885: (tick.decode(), "ltp")}
    assert cache.lookup([], []).found == {} and cache.lookup([], [7]).names == [None]
