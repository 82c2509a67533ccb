"""The key set's policy (ticker.web.jwks.KeySet) on a fake clock: max-age clamping, the
unknown-kid rate limit, backoff, and stale then expired during an outage."""

from __future__ import annotations

import json

import pytest

from tests.support.jwks import new_key, public_jwk
from ticker.web.jwks import FetchFailed, KeySet, KeysUnavailable, UnknownKey, parse

K1, K2 = new_key(), new_key()


class Issuer:
    """A fake clock and JWKS endpoint: what the next fetch answers, and how many there were."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.keys = {"k1": K1}
        self.max_age: int | None = None
        self.failure: FetchFailed | None = None
        self.fetches = 0

    def fetch(self, _url: str, _timeout: float):
        self.fetches += 1
        if self.failure:
            raise self.failure
        body = json.dumps({"keys": [public_jwk(kid, key) for kid, key in self.keys.items()]}).encode()
        return parse(body, f"max-age={self.max_age}" if self.max_age is not None else "")


@pytest.fixture
def issuer() -> Issuer:
    return Issuer()


def key_set(issuer: Issuer, **overrides) -> KeySet:
    settings = {"max_age_secs": 300, "min_age_secs": 10, "stale_secs": 60, "timeout_secs": 2, **overrides}
    return KeySet("http://issuer.invalid/jwks", clock=lambda: issuer.now, fetcher=issuer.fetch, **settings)


def test_max_age_is_clamped_to_the_floor_and_ceiling(issuer):
    keys = key_set(issuer)
    for stated, kept in ((None, 300), (100_000, 300), (0, 10), (42, 42)):
        issuer.max_age = stated
        keys.refresh("schedule", wait=True)
        assert keys.max_age == kept


def test_unknown_kids_refetch_at_most_once_a_second(issuer):
    keys = key_set(issuer)
    keys.key_for("k1")
    issuer.keys = {"k2": K2}
    issuer.now += 5
    assert keys.key_for("k2").key_id == "k2"  # on first sight
    with pytest.raises(UnknownKey):
        keys.key_for("k1")  # withdrawn: the refetch mirrored the set
    fetched = issuer.fetches
    for kid in range(100):
        with pytest.raises(UnknownKey):
            keys.key_for(f"random-{kid}")
    assert issuer.fetches == fetched  # within the second of the last refetch: none
    issuer.now += 1
    with pytest.raises(UnknownKey):
        keys.key_for("random")
    assert issuer.fetches == fetched + 1


def test_an_outage_keeps_the_set_while_stale_then_refuses_and_retries_with_backoff(issuer):
    keys = key_set(issuer, max_age_secs=30, stale_secs=60)
    keys.key_for("k1")
    issuer.failure = FetchFailed("unreachable", "connection refused")
    issuer.now += 31
    keys.refresh_if_due()
    assert keys.state() == "fresh" and keys.failures == 1  # due, failed: overdue only after the fetch timeout
    issuer.now += 10
    assert keys.state() == "stale" and keys.key_for("k1")
    attempts = []
    for _ in range(120):  # two minutes, a verification and a loop turn every second
        issuer.now += 1
        before = issuer.fetches
        keys.refresh_if_due()
        try:
            keys.key_for("k1")
        except KeysUnavailable:
            pass
        if issuer.fetches > before:
            attempts.append(issuer.now)
    gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
    assert gaps and min(gaps) >= 1 and max(gaps) <= 30 and len(attempts) < 20, attempts
    assert keys.state() == "expired" and not keys.report()["ok"]
    with pytest.raises(KeysUnavailable):
        keys.key_for("k1")
    issuer.failure = None
    issuer.now += 30
    assert keys.key_for("k1").key_id == "k1" and keys.state() == "fresh"


@pytest.mark.parametrize("body", [b"<html>", b"{}", b'{"keys": []}', b'{"keys": [{"kty": "RSA"}]}', b"[]"])
def test_garbage_is_not_a_key_set(body):
    with pytest.raises(FetchFailed) as failure:
        parse(body)
    assert failure.value.outcome == "invalid"
