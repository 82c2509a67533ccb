"""Whether each token's ticks can flow now, and if not why, from what the pool reports to Redis.

A token streams when its slot's shard reports itself streaming (and recently). Otherwise the
reason is one clients can act on (docs/API.md, `upstream_unavailable`):

- `token_expired`: Kite refused the access token of the account the token needs (every
  morning, before a login), so it waits for a slot of an account that can stream;
- `feed_down`: its shard lost the Kite connection and is reconnecting;
- `no_connection`: no shard streams its slot right now (a worker died and its slot is being
  taken over), or no slot has taken the token yet.
"""

from __future__ import annotations

import time

import redis

from ticker.bus import keys
from ticker.bus.lease import shard_live

TOKEN_EXPIRED = "token_expired"
FEED_DOWN = "feed_down"
NO_CONNECTION = "no_connection"
BUS_UNAVAILABLE = "bus_unavailable"  # not read from Redis: a replica that cannot hear it says so itself


def token_states(client: redis.Redis, tokens: list[int], now: float | None = None) -> dict[int, str | None]:
    """token -> None if its ticks can flow now, else the reason they cannot. Raises
    redis.RedisError when Redis cannot be read."""
    if not tokens:
        return {}
    now = time.time() if now is None else now
    pipe = client.pipeline(transaction=False)
    pipe.hmget(keys.ASSIGNED_SLOT, tokens)
    pipe.smismember(keys.ASSIGNMENT_WAITING, tokens)
    pipe.hvals(keys.ACCOUNTS_DOWN)
    slots, waiting, down = pipe.execute()
    shards = _shard_states(client, {slot for slot in slots if slot})
    waiting_reason = TOKEN_EXPIRED if TOKEN_EXPIRED in down else NO_CONNECTION
    states: dict[int, str | None] = {}
    for token, slot, waits in zip(tokens, slots, waiting, strict=True):
        if slot:
            states[token] = _slot_state(shards.get(slot) or {}, now)
        else:
            states[token] = waiting_reason if waits else NO_CONNECTION
    return states


def _shard_states(client: redis.Redis, slots: set[str]) -> dict[str, dict[str, str]]:
    ordered = sorted(slots)
    pipe = client.pipeline(transaction=False)
    for slot in ordered:
        pipe.hgetall(keys.shard_state(slot))
    return dict(zip(ordered, pipe.execute(), strict=True))


def _slot_state(state: dict[str, str], now: float) -> str | None:
    if shard_live(state, now):
        return None
    return FEED_DOWN if state.get("state") == "reconnecting" else NO_CONNECTION
