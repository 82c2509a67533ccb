"""The Redis client factory: a pool that makes waiting for a connection explicit."""

from __future__ import annotations

import time

import pytest
import redis

from tests.conftest import REDIS_URL
from ticker.bus.connection import PoolExhausted, WaitingConnectionPool, redis_client


def test_a_caller_waits_for_a_busy_pool_then_gets_pool_exhausted():
    pool = WaitingConnectionPool.from_url(REDIS_URL, max_connections=1, timeout=0.3)
    client = redis.Redis(connection_pool=pool)
    held = pool.get_connection()
    started = time.monotonic()
    with pytest.raises(PoolExhausted):
        client.ping()
    assert time.monotonic() - started >= 0.3  # it waited for the connection before giving up
    pool.release(held)
    assert client.ping()


def test_a_dead_server_is_not_mistaken_for_a_busy_pool():
    client = redis.Redis(connection_pool=WaitingConnectionPool(port=1, socket_connect_timeout=0.5))
    with pytest.raises(redis.ConnectionError) as raised:
        client.ping()
    assert not isinstance(raised.value, PoolExhausted)


def test_background_work_has_a_pool_of_its_own():
    requests, background = redis_client(REDIS_URL), redis_client(REDIS_URL, "background")
    assert requests.connection_pool is not background.connection_pool
    assert background.connection_pool.max_connections < requests.connection_pool.max_connections
