"""Connect requires a valid JWT; each refusal says why, at connect time."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt as pyjwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import AUDIENCE, ISSUER
from tests.support.clients import RecordingClient
from tests.support.processes import wait_for
from tests.web.webproc import start_web

pytestmark = pytest.mark.integration


def claims(**overrides) -> dict:
    now = int(time.time())
    return {"sub": "mallory", "iat": now, "nbf": now, "exp": now + 600, "aud": AUDIENCE, "iss": ISSUER,
            "type": "access", "jti": "x", "fresh": False, **overrides}


def refusal(url: str, **connect_kwargs) -> dict:
    return RecordingClient().try_connect(url, **connect_kwargs)


def test_a_valid_token_connects_and_is_greeted(stack, make_token):
    client = RecordingClient().connect(stack["url"], make_token("alice"))
    try:
        greeting = wait_for(lambda: client.events["connected"], 5, "connected")[0]
        assert greeting["user"] == "alice"
        assert greeting["connection_id"]
        assert greeting["limits"]["max_tokens_per_connection"] > 0
        assert "+05:30" in greeting["server_time"]
    finally:
        client.close()


def test_no_token_is_refused(stack):
    error = refusal(stack["url"])
    assert error.get("code") == "auth_required", error


def test_expired_token_is_refused(stack, jwt_keys):
    token = pyjwt.encode(claims(exp=int(time.time()) - 60), jwt_keys[0].read_bytes(), algorithm="RS256")
    assert refusal(stack["url"], auth={"token": token})["code"] == "token_expired"


def test_token_signed_by_another_key_is_refused(stack):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = pyjwt.encode(claims(), other, algorithm="RS256")
    error = refusal(stack["url"], auth={"token": token})
    assert error["code"] == "token_invalid" and "signature" in error["message"]


def test_unsigned_alg_none_token_is_refused(stack):
    token = pyjwt.encode(claims(), None, algorithm="none")
    assert refusal(stack["url"], auth={"token": token})["code"] == "token_invalid"


def hs256_by_hand(payload: dict, secret: bytes) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(payload).encode())
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


def test_hs256_token_signed_with_the_public_key_is_refused(stack, jwt_keys):
    # The classic algorithm-confusion attack: only the configured algorithms are accepted.
    token = hs256_by_hand(claims(), jwt_keys[1].read_bytes())
    assert refusal(stack["url"], auth={"token": token})["code"] == "token_invalid"


def test_wrong_audience_and_issuer_are_refused(stack, jwt_keys):
    key = jwt_keys[0].read_bytes()
    wrong_aud = pyjwt.encode(claims(aud="someone-else"), key, algorithm="RS256")
    wrong_iss = pyjwt.encode(claims(iss="https://evil.invalid/"), key, algorithm="RS256")
    assert refusal(stack["url"], auth={"token": wrong_aud})["code"] == "token_wrong_audience"
    assert refusal(stack["url"], auth={"token": wrong_iss})["code"] == "token_wrong_issuer"


def test_garbage_token_is_refused(stack):
    assert refusal(stack["url"], auth={"token": "not.a.jwt"})["code"] == "token_invalid"


def test_token_in_query_string_and_bearer_header_are_accepted(stack, make_token):
    token = make_token("carol")
    by_header = RecordingClient()
    by_header.sio.connect(stack["url"], headers={"Authorization": f"Bearer {token}"},
                          transports=["websocket"], wait_timeout=5)
    by_query = RecordingClient()
    by_query.sio.connect(f"{stack['url']}?token={token}", transports=["websocket"], wait_timeout=5)
    for client in (by_header, by_query):
        assert wait_for(lambda c=client: c.events["connected"], 5, "connected")[0]["user"] == "carol"
        client.close()


# Clock skew, exp policy and size bound (docs/API.md, "Authentication") ---------------------

LEEWAY = 30  # JWT_LEEWAY_SECS's default, which the session's replica runs with


def signed(jwt_keys, **overrides) -> str:
    return pyjwt.encode(claims(**overrides), jwt_keys[0].read_bytes(), algorithm="RS256")


@pytest.mark.parametrize("claim", ["iat", "nbf"])
def test_a_token_from_a_clock_a_little_ahead_is_accepted_everywhere(stack, jwt_keys, claim):
    token = signed(jwt_keys, sub="skewed", **{claim: int(time.time()) + 2})
    client = RecordingClient().connect(stack["url"], token)
    try:
        assert wait_for(lambda: client.events["connected"], 5, "connected")[0]["user"] == "skewed"
        fresh = signed(jwt_keys, sub="skewed", **{claim: int(time.time()) + 2})
        assert client.call("reauth", {"token": fresh})["user"] == "skewed"
    finally:
        client.close()
    answer = requests.get(f"{stack['url']}/instruments", params={"q": "NIFTY"},
                          headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("claim", ["iat", "nbf"])
def test_a_token_from_beyond_the_leeway_is_not_yet_valid(stack, jwt_keys, claim):
    token = signed(jwt_keys, **{claim: int(time.time()) + LEEWAY + 5})
    error = refusal(stack["url"], auth={"token": token})
    assert error["code"] == "token_not_yet_valid", error
    answer = requests.get(f"{stack['url']}/instruments", params={"q": "NIFTY"},
                          headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert answer.status_code == 401 and answer.json()["code"] == "token_not_yet_valid"


def test_expiry_counts_with_the_leeway(stack, jwt_keys):
    within = signed(jwt_keys, sub="late", exp=int(time.time()) - 10)
    client = RecordingClient().connect(stack["url"], within)
    try:
        assert wait_for(lambda: client.events["connected"], 5, "connected")[0]["user"] == "late"
        time.sleep(1.0)  # the expiry sweep runs every 0.5 s: it must not take the token for expired yet
        assert client.sio.connected and not client.events["error"], client.events["error"]
    finally:
        client.close()
    beyond = signed(jwt_keys, exp=int(time.time()) - LEEWAY - 5)
    assert refusal(stack["url"], auth={"token": beyond})["code"] == "token_expired"


def test_a_token_without_exp_is_refused(stack, jwt_keys):
    body = claims()
    del body["exp"]
    error = refusal(stack["url"], auth={"token": pyjwt.encode(body, jwt_keys[0].read_bytes(), algorithm="RS256")})
    assert error["code"] == "token_exp_required" and "exp" in error["message"], error


def test_a_huge_token_is_refused_before_decoding(stack, jwt_keys):
    token = signed(jwt_keys, padding="x" * 20_000)
    error = refusal(stack["url"], auth={"token": token})
    assert error["code"] == "token_too_large" and "8192" in error["message"], error
    answer = requests.get(f"{stack['url']}/ws/stats", headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert answer.status_code == 401 and answer.json()["code"] == "token_too_large"


# A connection's life is capped whatever its token says -------------------------------------

@pytest.fixture(scope="module")
def capped(stack, processes, service_env, workdir):
    return start_web(processes, service_env, workdir, "web-capped", MAX_CONNECTION_SECS="2", JWT_REQUIRE_EXP="false")


def test_a_connection_is_cut_at_its_maximum_age(capped, jwt_keys):
    body = claims(sub="forever")
    del body["exp"]  # allowed on this replica: only the cap ends it
    client = RecordingClient().connect(capped.url, pyjwt.encode(body, jwt_keys[0].read_bytes(), algorithm="RS256"))
    started = time.monotonic()
    try:
        greeting = wait_for(lambda: client.events["connected"], 5, "connected")[0]
        assert greeting["limits"]["max_connection_secs"] == 2
        wait_for(lambda: not client.sio.connected, 6, "the capped connection to be cut")
        assert 1.5 <= time.monotonic() - started < 5
        assert client.events["error"][-1]["code"] == "connection_max_age", client.events["error"]
    finally:
        client.close()
    scrape = requests.get(f"{capped.url}/metrics?scope=replica", timeout=5).text
    assert 'ticker_clients_disconnected_total{reason="connection_max_age"} 1.0' in scrape


def test_reauth_with_a_token_without_exp_is_answered(capped, jwt_keys):
    body = claims(sub="noexp")
    del body["exp"]  # allowed on this replica
    token = pyjwt.encode(body, jwt_keys[0].read_bytes(), algorithm="RS256")
    client = RecordingClient().connect(capped.url, token)
    try:
        reply = client.call("reauth", {"token": token})
        assert reply == {"user": "noexp", "expires_at": None}, reply
    finally:
        client.close()


def test_an_exp_beyond_any_float_neither_fails_reauth_nor_stops_the_expiry_sweep(stack, jwt_keys):
    # PyJWT accepts any integer `exp`; one too large for a float must not break the replica's
    # sweep (which would also stop MAX_CONNECTION_SECS and fail /health/ready for everyone).
    token = signed(jwt_keys, sub="far-future", exp=10**400)
    client = RecordingClient().connect(stack["url"], token)
    try:
        reply = client.call("reauth", {"token": token})
        assert reply.get("user") == "far-future", reply
        time.sleep(1.5)  # three turns of the sweep
        sweep = requests.get(f"{stack['url']}/health/ready", timeout=5).json()["checks"]["delivery"]["loops"]
        assert "OverflowError" not in sweep["expiry_sweep"].get("last_error", ""), sweep
    finally:
        client.close()
