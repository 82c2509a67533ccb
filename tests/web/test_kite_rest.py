"""Kite-REST authentication and envelopes (ticker.web.kite_rest), without servers."""

from __future__ import annotations

import pytest
import redis

from ticker.bus.connection import PoolExhausted
from ticker.web.kite_rest import KiteError, authenticate, credentials, dependency_error


@pytest.mark.parametrize(("header", "expected"), [
    ("token any_key:a.b.c", "a.b.c"),
    ("token :a.b.c", "a.b.c"),  # the api_key is not checked
    ("Token key:with:colons:a.b.c", "a.b.c"),  # a JWT holds no colon: the last one splits
    ("Bearer a.b.c", "a.b.c"),
    ("token a.b.c", None),  # Kite's scheme without the api_key part
    ("token key:", None),
    ("", None),
    ("Basic dXNlcjpwYXNz", None),
])
def test_credentials_take_the_jwt_from_kite_or_bearer_headers(header, expected):
    assert credentials({"Authorization": header}) == expected


def test_a_kite_client_with_the_jwt_as_access_token_authenticates(app, make_token):
    with app.app_context():
        claims = authenticate({"Authorization": f"token whatever:{make_token('kite-user')}"})
    assert claims["sub"] == "kite-user"


@pytest.mark.parametrize(("header", "code"), [
    ("", "auth_required"),
    ("token key:not-a-jwt", "token_invalid"),
])
def test_a_refused_jwt_is_kites_token_exception(app, header, code):
    with app.app_context(), pytest.raises(KiteError) as refused:
        authenticate({"Authorization": header})
    assert (refused.value.status, refused.value.error_type, refused.value.code) == (403, "TokenException", code)


def test_an_expired_jwt_is_a_token_exception_saying_so(app, make_token):
    with app.app_context(), pytest.raises(KiteError) as refused:
        authenticate({"Authorization": f"token k:{make_token('late', ttl=-120)}"})
    assert (refused.value.status, refused.value.code) == (403, "token_expired")


@pytest.mark.parametrize(("exc", "code"), [
    (redis.ConnectionError("down"), "bus_unavailable"),
    (redis.TimeoutError("slow"), "bus_unavailable"),
    (PoolExhausted("busy"), "server_busy"),
])
def test_failed_dependencies_are_network_exceptions_with_retry_after(exc, code):
    failed = dependency_error(exc)
    assert (failed.status, failed.error_type, failed.code) == (503, "NetworkException", code)
    assert int(failed.headers["Retry-After"]) > 0


def test_a_bug_is_not_taken_for_a_dependency():
    assert dependency_error(KeyError("x")) is None
