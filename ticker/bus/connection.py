"""The one Redis client factory."""

from __future__ import annotations

from functools import lru_cache

import redis


@lru_cache(maxsize=8)
def redis_client(url: str) -> redis.Redis:
    """A pooled client per URL and process. Calls retry once on a dropped connection, so a
    restarted Redis costs the caller one error at most, never a restart of the process."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        health_check_interval=15,
        socket_connect_timeout=2,
        socket_timeout=5,
        retry_on_timeout=True,
    )
