"""Every HTTP route answers its errors in one shape, `{"code", "message"}` (docs/API.md, HTTP errors),
but the routes in Kite Connect's REST shapes, which answer in Kite's envelope with the same `code`."""

from __future__ import annotations

import pytest
import requests

pytestmark = pytest.mark.integration

# One failing request per route of the app: (method, path, query, headers, status).
ERRORS = {
    "/": ("POST", "/", {}, {}, 405),
    "/favicon.ico": ("POST", "/favicon.ico", {}, {}, 405),
    "/assets/<path:filename>": ("GET", "/assets/nothing.js", {}, {}, 404),
    "/static/<path:filename>": ("GET", "/static/nothing.js", {}, {}, 404),
    "/dev/token": ("POST", "/dev/token", {}, {}, 404),  # only in development
    "/health": ("POST", "/health", {}, {}, 405),
    "/health/ready": ("POST", "/health/ready", {}, {}, 405),
    "/health/live": ("POST", "/health/live", {}, {}, 405),
    "/ws/stats": ("GET", "/ws/stats", {}, {}, 401),
    "/metrics": ("GET", "/metrics", {"scope": "everything"}, {}, 400),
    "/instruments": ("GET", "/instruments", {"q": "INFY"}, {"Authorization": "Bearer not-a-jwt"}, 401),
    "/kite/login/<api_key>": ("GET", "/kite/login/nobody", {}, {}, 401),
    "/kite/callback/<api_key>": ("GET", "/kite/callback/nobody", {}, {}, 400),
    "/kite/callback": ("GET", "/kite/callback", {}, {}, 400),
}


# Routes in Kite's REST shapes (ticker.web.kite_rest): (path, query, headers, status, error_type).
KITE_ERRORS = {
    "/candles": ("/candles", {"instrument": "NSE:INFY"}, {}, 403, "TokenException"),
    "/instruments/historical/<token>/<interval>": (
        "/instruments/historical/408065/minute", {}, {"Authorization": "token key:not-a-jwt"}, 403, "TokenException"),
    "/quote": ("/quote", {}, {"Authorization": "token key:not-a-jwt"}, 403, "TokenException"),
    "/quote/ohlc": ("/quote/ohlc", {}, {}, 403, "TokenException"),
    "/quote/ltp": ("/quote/ltp", {"i": "INFY"}, {"Authorization": "token key:not-a-jwt"}, 403, "TokenException"),
}


def test_every_route_is_covered(app):
    assert {rule.rule for rule in app.url_map.iter_rules()} == set(ERRORS) | set(KITE_ERRORS)


@pytest.mark.parametrize("rule", sorted(KITE_ERRORS))
def test_kite_routes_answer_kites_error_envelope_with_the_code(stack, rule):
    path, query, headers, status, error_type = KITE_ERRORS[rule]
    reply = requests.get(f"{stack['url']}{path}", params=query, headers=headers, timeout=10)

    body = reply.json()
    assert reply.status_code == status, body
    assert set(body) == {"status", "error_type", "code", "message", "data"}, body
    assert (body["status"], body["error_type"], body["data"]) == ("error", error_type, None)
    assert body["code"].startswith(("auth_", "token_")) and body["message"], body


@pytest.mark.parametrize("rule", sorted(ERRORS))
def test_errors_are_code_and_message(stack, rule):
    method, path, query, headers, status = ERRORS[rule]
    reply = requests.request(method, f"{stack['url']}{path}", params=query, headers=headers, timeout=10)

    body = reply.json()
    assert reply.status_code == status, body
    assert set(body) == {"code", "message"} and all(isinstance(v, str) and v for v in body.values()), body


def test_stats_refuses_a_user_token_in_the_same_shape(stack, make_token):
    reply = requests.get(f"{stack['url']}/ws/stats", headers={"Authorization": f"Bearer {make_token()}"}, timeout=10)

    assert (reply.status_code, reply.json()) == (403, {"code": "admin_required", "message": reply.json()["message"]})
