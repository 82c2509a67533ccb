"""Tokens verified against a JWKS URL: rotation, withdrawal, the refetch schedule, outages;
and the attack matrix against both a public-key replica and a JWKS replica."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import jwt as pyjwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization

from tests.conftest import AUDIENCE, ISSUER
from tests.support.clients import RecordingClient
from tests.support.jwks import JwksServer, new_key
from tests.support.processes import wait_for
from tests.web.webproc import start_web

pytestmark = pytest.mark.integration

LEEWAY = 30  # JWT_LEEWAY_SECS's default
K1, K2, K3 = new_key(), new_key(), new_key()
MANY_CONNECTS = "100000"  # the storm comes from one address: lift the per-address connect limit


def claims(**overrides) -> dict:
    now = int(time.time())
    return {"sub": "jay", "iat": now, "nbf": now, "exp": now + 600, "aud": AUDIENCE, "iss": ISSUER,
            "type": "access", "jti": uuid.uuid4().hex, "fresh": False, **overrides}


def token(key, kid: str | None, **overrides) -> str:
    return pyjwt.encode(claims(**overrides), key, algorithm="RS256", headers={"kid": kid} if kid else None)


def connects(url: str, jwt: str) -> bool:
    client = RecordingClient()
    try:
        client.connect(url, jwt)
        return bool(wait_for(lambda: client.events["connected"], 5, "connected"))
    finally:
        client.close()


def refused(url: str, jwt: str) -> str:
    return RecordingClient().try_connect(url, auth={"token": jwt})["code"]


def outcome(url: str, jwt: str) -> str:
    """`accepted`, or the code of the refusal."""
    try:
        return refused(url, jwt)
    except AssertionError:
        return "accepted"


def jwks_check(url: str) -> tuple[int, dict]:
    answer = requests.get(f"{url}/health", timeout=10)
    return answer.status_code, answer.json()


def fetches(url: str, outcome: str) -> float:
    total = 0.0
    for line in requests.get(f"{url}/metrics?scope=replica", timeout=5).text.splitlines():
        if line.startswith("ticker_jwks_fetches_total{") and f'outcome="{outcome}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def jwks():
    server = JwksServer()
    server.publish(k1=K1)
    yield server
    server.close()


@pytest.fixture(scope="module")
def web(stack, processes, service_env, workdir, jwks):
    return start_web(processes, service_env, workdir, "web-jwks", JWT_JWKS_URL=jwks.url,
                     JWT_JWKS_MAX_AGE_SECS="60", MAX_CONNECTS_PER_ADDRESS_PER_SEC=MANY_CONNECTS)


@pytest.fixture(scope="module")
def flaky():
    server = JwksServer()
    server.publish(k1=K1)
    server.max_age = 1
    yield server
    server.close()


@pytest.fixture(scope="module")
def flaky_web(stack, processes, service_env, workdir, flaky):
    """A replica whose key set is due every second and trusted 3 s past that."""
    return start_web(processes, service_env, workdir, "web-jwks-flaky", JWT_JWKS_URL=flaky.url,
                     JWT_JWKS_MIN_AGE_SECS="1", JWT_JWKS_STALE_SECS="3", JWT_JWKS_TIMEOUT_SECS="1",
                     MAX_CONNECTS_PER_ADDRESS_PER_SEC=MANY_CONNECTS)


# Rotation -------------------------------------------------------------------------------

def test_a_rotated_key_is_accepted_at_once_and_the_withdrawn_one_refused(web, jwks):
    assert connects(web.url, token(K1, "k1"))
    before = jwks.count()
    jwks.publish(k2=K2)  # k1 withdrawn, k2 new
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda _: connects(web.url, token(K2, "k2")), range(20)))
    assert all(results)
    assert jwks.count() - before <= 2, "concurrent verifications of a new kid share one fetch"
    assert refused(web.url, token(K1, "k1")) == "token_invalid"  # the fetch showed k1 gone
    assert fetches(web.url, "ok") >= 2


def test_under_eventlet_too_a_rotated_key_is_fetched_once_for_a_crowd_and_accepted(stack, processes, service_env,
                                                                                    workdir):
    """The single-flight fetch rests on the monkey-patched `threading` lock: eventlet's too."""
    server = JwksServer()
    server.publish(k1=K1)
    web = start_web(processes, service_env, workdir, "web-jwks-eventlet", ASYNC_MODE="eventlet",
                    JWT_JWKS_URL=server.url, JWT_JWKS_MAX_AGE_SECS="60",
                    MAX_CONNECTS_PER_ADDRESS_PER_SEC=MANY_CONNECTS)
    try:
        assert connects(web.url, token(K1, "k1"))
        before = server.count()
        server.publish(k2=K2)
        with ThreadPoolExecutor(20) as pool:
            results = list(pool.map(lambda _: connects(web.url, token(K2, "k2")), range(20)))
        assert all(results)
        assert server.count() - before <= 2, "concurrent verifications of a new kid share one fetch"
        assert refused(web.url, token(K1, "k1")) == "token_invalid"
    finally:
        web.process.stop()
        server.close()


def test_random_kids_cause_no_fetch_storm(web, jwks):
    jwks.publish(k2=K2)
    time.sleep(1.1)  # past the unknown-kid refetch interval of any earlier test
    before = jwks.count()
    forged = [token(K3, uuid.uuid4().hex) for _ in range(200)]
    with ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(lambda jwt: refused(web.url, jwt), forged))
    assert codes == ["token_invalid"] * 200
    assert jwks.count() - before <= 6, f"{jwks.count() - before} fetches for 200 unknown kids"


def test_the_health_check_shows_the_key_set(web, jwks):
    jwks.publish(k2=K2)
    jwks.max_age = 100_000  # clamped to JWT_JWKS_MAX_AGE_SECS
    time.sleep(1.1)
    assert connects(web.url, token(K2, "k2"))
    refused(web.url, token(K3, "k-new"))  # an unknown kid: a fetch, which reads the max-age
    status, body = jwks_check(web.url)
    check = body["checks"]["jwks"]
    assert status == 200 and check["ok"] and not check.get("degraded"), check
    assert check["kids"] == ["k2"] and check["state"] == "fresh" and check["max_age_secs"] == 60
    assert 0 <= check["age_secs"] < 5
    jwks.max_age = None


# The schedule and outages ---------------------------------------------------------------

def test_a_withdrawn_key_is_refused_once_the_schedule_refetches(flaky_web, flaky):
    flaky.publish(k1=K1, k2=K2)
    assert connects(flaky_web.url, token(K2, "k2"))
    flaky.publish(k1=K1)
    flaky.wait_for_hits(flaky.count() + 1)  # max-age=1: refetched within about a second
    wait_for(lambda: outcome(flaky_web.url, token(K2, "k2")) == "token_invalid", 5, "k2 to be refused")
    assert connects(flaky_web.url, token(K1, "k1"))


def test_an_outage_serves_the_last_set_for_a_while_then_says_auth_unavailable(flaky_web, flaky):
    flaky.publish(k1=K1)
    assert connects(flaky_web.url, token(K1, "k1"))
    errors_before = fetches(flaky_web.url, "http_error")
    flaky.mode = "error"
    wait_for(lambda: jwks_check(flaky_web.url)[1]["checks"]["jwks"]["state"] == "stale", 8, "a stale set", interval=0.3)
    status, body = jwks_check(flaky_web.url)
    assert status == 200 and body["status"] == "degraded" and "500" in body["checks"]["jwks"]["last_error"]
    assert connects(flaky_web.url, token(K1, "k1"))  # the last good set still verifies

    wait_for(lambda: outcome(flaky_web.url, token(K1, "k1")) == "auth_unavailable", 8, "auth_unavailable")
    status, body = jwks_check(flaky_web.url)
    assert status == 503 and not body["checks"]["jwks"]["ok"] and body["checks"]["jwks"]["state"] == "expired"
    answer = requests.get(f"{flaky_web.url}/ws/stats", headers={"Authorization": f"Bearer {token(K1, 'k1')}"},
                          timeout=5)
    assert answer.status_code == 503 and answer.json()["code"] == "auth_unavailable"
    assert fetches(flaky_web.url, "http_error") > errors_before

    # Retried with backoff, not once per verification.
    before = flaky.count()
    for _ in range(30):
        refused(flaky_web.url, token(K1, "k1"))
    assert flaky.count() - before <= 4, f"{flaky.count() - before} fetches for 30 refused connects"

    flaky.mode = "garbage"
    wait_for(lambda: fetches(flaky_web.url, "invalid") >= 1, 5, "a garbage answer counted")
    flaky.mode = "ok"
    wait_for(lambda: jwks_check(flaky_web.url)[0] == 200, 10, "the key set back")
    assert connects(flaky_web.url, token(K1, "k1"))


def test_a_slow_key_server_does_not_stall_connects(flaky_web, flaky):
    flaky.publish(k1=K1)
    assert connects(flaky_web.url, token(K1, "k1"))
    flaky.mode = "slow"
    try:
        for _ in range(5):
            started = time.monotonic()
            assert connects(flaky_web.url, token(K1, "k1"))
            assert time.monotonic() - started < 1.0
            time.sleep(0.3)
    finally:
        flaky.mode = "ok"


# The attack matrix ----------------------------------------------------------------------

def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict, payload: dict, secret: bytes | None) -> str:
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest() if secret else b""
    return signing_input + "." + b64(signature)


def tampered(jwt: str) -> str:
    header, _, signature = jwt.split(".")
    return ".".join([header, b64(json.dumps(claims(sub="root", admin=True)).encode()), signature])


def public_pem(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


ATTACKS = {  # name: (make(key, kid), the code it is refused with)
    "alg_none": (lambda key, kid: forge({"alg": "none", "typ": "JWT", "kid": kid}, claims(), None), "token_invalid"),
    "hs256_with_public_key": (lambda key, kid: forge({"alg": "HS256", "typ": "JWT", "kid": kid}, claims(),
                                                     public_pem(key)), "token_invalid"),
    "another_key": (lambda key, kid: token(K3, kid), "token_invalid"),
    "expired": (lambda key, kid: token(key, kid, exp=int(time.time()) - LEEWAY - 60), "token_expired"),
    "not_yet_valid": (lambda key, kid: token(key, kid, nbf=int(time.time()) + LEEWAY + 60), "token_not_yet_valid"),
    "tampered_payload": (lambda key, kid: tampered(token(key, kid)), "token_invalid"),
    "truncated_signature": (lambda key, kid: token(key, kid)[:-12], "token_invalid"),
    "wrong_audience": (lambda key, kid: token(key, kid, aud="someone-else"), "token_wrong_audience"),
    "wrong_issuer": (lambda key, kid: token(key, kid, iss="https://evil.invalid/"), "token_wrong_issuer"),
    "unknown_kid": (lambda key, kid: token(K3, "nobody-" + uuid.uuid4().hex), "token_invalid"),
    "huge": (lambda key, kid: token(key, kid, padding="x" * 9000), "token_too_large"),
    "empty_subject": (lambda key, kid: token(key, kid, sub=""), "token_invalid"),
    "not_ascii": (lambda key, kid: token(key, kid) + "\u00e9", "token_invalid"),
    "entitlements_in_lower_case": (lambda key, kid: token(key, kid, exchanges=["nse"]),
                                   "token_entitlements_invalid"),
}


@pytest.fixture(params=["public_key", "jwks"])
def target(request, jwt_keys):
    """(replica URL, the signing key it trusts, that key's kid)."""
    if request.param == "public_key":
        stack = request.getfixturevalue("stack")
        key = serialization.load_pem_private_key(jwt_keys[0].read_bytes(), None)
        return stack["url"], key, None
    request.getfixturevalue("jwks").publish(k2=K2)
    return request.getfixturevalue("web").url, K2, "k2"


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_every_attack_is_refused(target, attack):
    url, key, kid = target
    make, code = ATTACKS[attack]
    assert connects(url, token(key, kid)), "the untouched token is accepted"
    assert refused(url, make(key, kid)) == code
