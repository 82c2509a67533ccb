"""The Python client (clients/python) through the service's faults: JWT renewal before `exp` and
on the server's `token_expired` warning, the `connection_max_age` cut, and what each code the
server sends turns into (callbacks, retries).

Replicas with their own settings (`start_web`) serve the live tests, one per configuration,
started once for the module.
"""

from __future__ import annotations

import random
import time
from types import SimpleNamespace

import pytest
import ticker_client
from ticker_client import KiteTicker, kite, policy

from tests.clients.conftest import CLIENT_SRC
from tests.clients.test_python_client import Recorder, equities
from tests.support.processes import wait_for
from tests.web.webproc import start_web

GRACE_SECS = 1  # TOKEN_EXPIRY_GRACE_SECS of the expiry replica
MAX_AGE_SECS = 2  # MAX_CONNECTION_SECS of the max-age replica


def test_the_client_under_test_is_this_checkout():
    assert ticker_client.__file__.startswith(str(CLIENT_SRC))


@pytest.fixture(scope="module")
def expiry_web(stack, processes, service_env, workdir):
    """A replica that expires tokens at `exp` exactly and cuts GRACE_SECS after its warning."""
    return start_web(processes, service_env, workdir, "web-pyclient-expiry",
                     JWT_LEEWAY_SECS="0", TOKEN_EXPIRY_GRACE_SECS=str(GRACE_SECS))


@pytest.fixture(scope="module")
def max_age_web(stack, processes, service_env, workdir):
    """A replica that closes every connection MAX_AGE_SECS after it opened."""
    return start_web(processes, service_env, workdir, "web-pyclient-max-age", MAX_CONNECTION_SECS=str(MAX_AGE_SECS))


@pytest.fixture
def client():
    started = []

    def make(root: str, **kwargs) -> Recorder:
        kws = KiteTicker("any_api_key", root=root, **kwargs)
        started.append(kws)
        recorder = Recorder(kws)
        recorder.raw = []
        kws.on_message = lambda ws, payload, is_binary: recorder.raw.append(payload)
        return recorder

    yield make
    for kws in started:
        kws.close()


class Provider:
    """A token provider: the JWTs it handed out, when, and their `exp`."""

    def __init__(self, make_token, user: str, ttls: list, failures: tuple = ()):
        self.make_token, self.user, self.ttls, self.failures = make_token, user, ttls, set(failures)
        self.calls: list[float] = []
        self.tokens: list[str] = []

    def __call__(self) -> str:
        self.calls.append(time.time())
        if len(self.calls) in self.failures:
            raise RuntimeError("the token service is down for a moment")
        ttl = self.ttls[min(len(self.tokens), len(self.ttls) - 1)]
        self.tokens.append(self.make_token(self.user, ttl=ttl))
        return self.tokens[-1]

    def first_exp(self) -> float:
        return policy.jwt_expiry(self.tokens[0])


def ticks_after(recorder: Recorder, moment: float, token: int) -> None:
    """Wait until `moment` has passed and a tick of `token` arrived after it."""
    wait_for(lambda: time.time() > moment, moment - time.time() + 2, "the moment to pass")
    with recorder.lock:
        recorder.ticks.clear()
    wait_for(lambda: any(t["instrument_token"] == token for t in recorder.ticks), 5, f"a tick of {token}")


# (1) JWT renewal keeps the connection: before `exp` on its own, and on the server's warning.

def test_reauth_before_exp_and_on_the_token_expired_warning_keep_the_connection(
    expiry_web, client, make_token, database
):
    early_token, warned_token = equities(database, 12)[10:12]
    # Renews on its own: every token lives 3 s, the client sends `reauth` at 80% of each life.
    early = Provider(make_token, "renews-early", ttls=[3])
    renewing = client(expiry_web.url, token_provider=early)
    renewing.ticker.subscribe([early_token])
    # Misses its own renewal (the provider fails at that moment), so the server's warning at
    # `exp` is what makes it renew: a 2 s token, then a failure, then an hour-long token.
    late = Provider(make_token, "renews-late", ttls=[2, 3600], failures=(2,))
    warned = client(expiry_web.url, token_provider=late)
    warned.ticker.subscribe([warned_token])
    renewing.ticker.connect(threaded=True)
    warned.ticker.connect(threaded=True)
    wait_for(lambda: renewing.ticks and warned.ticks, 5, "ticks on both connections")

    # Past each first token's `exp` + grace + a sweep, without a renewal the server has cut.
    ticks_after(renewing, early.first_exp() + GRACE_SECS + 1, early_token)
    ticks_after(warned, late.first_exp() + GRACE_SECS + 1, warned_token)

    assert early.calls[1] < early.first_exp() and 3 <= len(early.tokens) <= 6  # before each `exp`, not in a loop
    assert not [m for m in renewing.raw if "token_expired" in m]  # so the server never warned
    assert not renewing.events["on_error"] and not renewing.events["on_close"]
    assert not renewing.events["on_reconnect"] and len(renewing.events["on_connect"]) == 1

    warning = [m for m in warned.raw if "token_expired" in m]
    assert len(warning) == 1 and '"grace_secs": 1' in warning[0]
    assert len(late.calls) == 3 and late.calls[2] >= late.first_exp() - 0.1  # the warning's reauth
    assert [e[0] for e in warned.events["on_error"]] == ["token_provider_failed"]
    assert not warned.events["on_close"] and not warned.events["on_reconnect"]
    assert renewing.ticker.is_connected() and warned.ticker.is_connected()


# (2) `connection_max_age`: the client reconnects with a fresh token and resubscribes.

def test_connection_max_age_reconnects_with_a_fresh_token_and_resubscribes(max_age_web, client, make_token, database):
    ltp, full = equities(database, 14)[12:14]
    provider = Provider(make_token, "aged", ttls=[3600])
    aged = client(max_age_web.url, token_provider=provider)
    aged.ticker.subscribe([ltp, full])
    aged.ticker.set_mode(KiteTicker.MODE_LTP, [ltp])
    aged.ticker.set_mode(KiteTicker.MODE_FULL, [full])
    aged.ticker.connect(threaded=True)
    aged.wait_for_modes({ltp: "ltp", full: "full"})

    wait_for(lambda: aged.events["on_reconnect"], MAX_AGE_SECS + 3, "on_reconnect")
    with aged.lock:
        aged.ticks.clear()
    aged.wait_for_modes({ltp: "ltp", full: "full"})

    assert aged.events["on_close"][0][0] == "connection_max_age"
    assert aged.events["on_error"][0][0] == "connection_max_age"
    assert aged.events["on_reconnect"][0] == (1,) and not aged.events["on_noreconnect"]
    assert len(aged.events["on_connect"]) >= 2
    assert len(provider.tokens) >= 2 and provider.tokens[0] != provider.tokens[1]
    assert {t["mode"] for t in aged.ticks if t["instrument_token"] == full} == {"full"}
    assert aged.ticker.subscribed_tokens == {ltp: "ltp", full: "full"}


# (3) Codes to callbacks, on the messages the server sends (ticker/web/replica.py's shapes).

def recorded(kws: KiteTicker) -> dict[str, list]:
    calls: dict[str, list] = {}
    for name in ("on_error", "on_upstream_unavailable", "on_upstream_restored", "on_close"):
        setattr(kws, name, lambda ws, *args, n=name: calls.setdefault(n, []).append(args))
    return calls


def test_upstream_and_capacity_codes_reach_their_callbacks():
    kws = KiteTicker(access_token="jwt")
    calls = recorded(kws)
    kws._subscriptions.want([11, 12, 13], "quote")
    kws._subscriptions.acked("subscribe", {"tokens": [11, 12, 13], "mode": "quote"},
                             {"tokens": [11, 12, 13], "mode": "quote", "total": 3, "rejected": []})

    kws._on_service_error({"code": "upstream_unavailable", "reason": "token_expired", "tokens": [11, 12],
                           "message": "Kite refused the access token these instruments stream with"})
    kws._on_upstream_restored({"tokens": [11, 12]})
    assert calls["on_upstream_unavailable"] == [([11, 12], "token_expired")]
    assert calls["on_upstream_restored"] == [([11, 12],)]
    assert kws.subscribed_tokens == {11: "quote", 12: "quote", 13: "quote"}  # kept through the outage

    kws._on_service_error({"code": "capacity_exhausted", "tokens": [13],
                           "message": "every Kite connection filled up before these instruments got a place"})
    kws._on_unsubscribed({"tokens": [13], "total": 2, "reason": "capacity_exhausted"})
    assert [e[0] for e in calls["on_error"]] == ["upstream_unavailable", "capacity_exhausted"]  # once each
    assert kws.subscribed_tokens == {11: "quote", 12: "quote"}  # not resubscribed after a reconnect
    assert kws._close_code is None  # none of these ends the connection


def test_a_token_expired_warning_answered_with_reauth_is_not_taken_for_the_close_code():
    kws = KiteTicker(token_provider=lambda: "fresh")
    kws._on_service_error({"code": "token_expired", "grace_secs": 30, "message": "send a fresh one"})
    assert kws._close_code is None
    kws._on_service_error({"code": "slow_consumer", "message": "you stayed behind"})
    assert kws._close_code == "slow_consumer"


# (4) A request refused for now is sent again after a backoff that grows with each refusal.

class FakeTimer:
    delays: list[float] = []

    def __init__(self, delay, action, args=()):
        FakeTimer.delays.append(delay)

    def start(self):
        pass


def test_server_busy_backoff_grows_with_jitter_up_to_the_cap(monkeypatch):
    monkeypatch.setattr(kite.threading, "Timer", FakeTimer)
    monkeypatch.setattr(FakeTimer, "delays", [])
    kws = KiteTicker(access_token="jwt", reconnect_max_delay=5)
    kws.ws = sio = SimpleNamespace(connected=False)
    random.seed(3)
    busy = {"error": {"code": "server_busy", "message": "try again"}}
    for _ in range(8):
        kws._on_ack(sio, "subscribe", {"tokens": [1], "mode": "quote"}, busy)
    delays = FakeTimer.delays
    ceilings = [min(5, 0.5 * 2 ** n) for n in range(8)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True)), delays
    assert delays[3] > delays[0] * 2 and max(delays) <= 5  # grows, capped at reconnect_max_delay
    assert len(set(delays[4:])) == 4  # jittered at the cap too

    kws._on_ack(sio, "subscribe", {"tokens": [1], "mode": "quote"},
                {"tokens": [1], "mode": "quote", "total": 1, "rejected": []})
    kws._on_ack(sio, "subscribe", {"tokens": [2], "mode": "quote"}, busy)
    assert delays[-1] <= 0.5  # an accepted request starts the count afresh


def test_short_lived_tokens_are_renewed_at_80_percent_not_in_a_loop():
    def jwt(exp):
        import base64
        return "x." + base64.urlsafe_b64encode(f'{{"exp": {exp}}}'.encode()).decode().rstrip("=") + ".y"

    assert policy.reauth_delay(jwt(5), now=0) == 4
    assert policy.reauth_delay(jwt(100), now=0) == 80
    assert policy.reauth_delay(jwt(3600), now=0) == 3540  # a minute before `exp`
    assert policy.reauth_delay(jwt(10), now=20) == 0  # already expired: at once

