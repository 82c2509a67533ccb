"""Which browser origins may open a Socket.IO connection (docs/API.md, "Origins").

A browser always sends `Origin`; other clients send none, or (websocket-client, under
python-socketio's WebSocket transport) the server's own URL. So a connection with no Origin or
the server's own is a non-browser client and is let through (its JWT is still checked); a
listed origin is let through; any other is refused with `origin_not_allowed`. Production with
`CORS_ALLOWED_ORIGINS` unset means same origin only; development allows any origin.

One replica per configuration; every (origin x client x transport) is tried against each.
"""

from __future__ import annotations

import json
import re
import sys

import pytest
import requests

from tests.conftest import start
from tests.support.clients import RecordingClient
from tests.support.processes import free_port
from tests.web.test_js_client import ROOT, run_js
from tests.web.webproc import Web, wait_until_healthy

pytestmark = pytest.mark.integration

LISTED = "https://app.example.com"
OTHER = "https://evil.example"
ORIGINS = ("none", "same", "listed", "other")
ALLOWED = {  # configuration -> the origins it lets through
    "production-unset": {"none", "same"},
    "production-listed": {"none", "same", "listed"},
    "development": {"none", "same", "listed", "other"},
}
SETTINGS = {
    "production-unset": {"TICKER_ENV": "production"},
    "production-listed": {"TICKER_ENV": "production", "CORS_ALLOWED_ORIGINS": f"{LISTED}, https://other.example.com"},
    "development": {"TICKER_ENV": "development"},
}


@pytest.fixture(scope="module")
def replicas(stack, processes, service_env, workdir) -> dict[str, Web]:
    """The three configurations, started at once."""
    base = {k: v for k, v in service_env.items() if k != "CORS_ALLOWED_ORIGINS"}
    webs = {}
    for name, settings in SETTINGS.items():
        port = free_port()
        # python-engineio's polling client, refused, waits for its long poll to end before it
        # returns: a ping a second ends it soon.
        env = {**base, "PORT": str(port), "PING_INTERVAL_SECS": "1", "PING_TIMEOUT_SECS": "5", **settings}
        webs[name] = Web(start(processes, f"web-origins-{name}", [sys.executable, "wsgi.py"], env, workdir), port)
    for web in webs.values():
        wait_until_healthy(web)
    return webs


def origin_header(web: Web, origin: str) -> str | None:
    return {"none": None, "same": web.url, "listed": LISTED, "other": OTHER}[origin]


def python_outcome(web: Web, token: str, origin: str, transport: str) -> str:
    value = origin_header(web, origin)
    if transport == "websocket":
        # websocket-client sends the server's own URL as Origin unless told otherwise.
        options = {"suppress_origin": True} if value is None else {"origin": value}
        client, headers = RecordingClient(websocket_extra_options=options), {}
    else:
        client, headers = RecordingClient(), ({} if value is None else {"Origin": value})
    try:
        client.connect(web.url, token, transports=[transport], headers=headers)
    except Exception:  # noqa: BLE001 -- the refusal: what the client's connect_error saw is the outcome
        error = client.connect_error  # {message, data: {code, message}}
        return error["data"]["code"] if isinstance(error, dict) and "data" in error else repr(error)
    client.close()
    return "connected"


def expected(configuration: str, origin: str) -> str:
    return "connected" if origin in ALLOWED[configuration] else "origin_not_allowed"


@pytest.mark.parametrize("configuration", SETTINGS)
def test_python_socketio_sees_the_origin_policy(replicas, make_token, configuration):
    web = replicas[configuration]
    seen = {(origin, transport): python_outcome(web, make_token(f"origins-py-{configuration}"), origin, transport)
            for origin in ORIGINS for transport in ("websocket", "polling")}
    assert seen == {(origin, transport): expected(configuration, origin)
                    for origin in ORIGINS for transport in ("websocket", "polling")}


@pytest.mark.parametrize("configuration", SETTINGS)
def test_socket_io_client_sees_the_origin_policy(replicas, make_token, configuration):
    web = replicas[configuration]
    cases = [{"transport": transport, "origin": origin_header(web, origin)}
             for origin in ORIGINS for transport in ("websocket", "polling")]
    outcomes = run_js(web.url, make_token("origins-js"), json.dumps(cases), script=ROOT / "tests/js/origins.mjs")
    assert outcomes == [expected(configuration, origin) for origin in ORIGINS for _ in ("websocket", "polling")]


def test_refusals_are_counted_and_logged(replicas, make_token):
    web = replicas["production-listed"]
    python_outcome(web, make_token("origins-count"), "other", "polling")
    metrics = requests.get(f"{web.url}/metrics", timeout=5).text
    assert re.search(r'ticker_connections_rejected_total\{reason="origin_not_allowed"\} [1-9]', metrics)
    assert f"refused connection from origin {OTHER}" in web.process.output()


def test_a_refused_origin_gets_no_cors_grant_on_polling(replicas):
    """A browser page of another origin cannot read the polling handshake."""
    web = replicas["production-listed"]
    for origin, granted in ((OTHER, None), (LISTED, LISTED)):
        reply = requests.get(f"{web.url}/socket.io/", params={"EIO": 4, "transport": "polling"},
                             headers={"Origin": origin}, timeout=5)
        assert reply.headers.get("Access-Control-Allow-Origin") == granted, (origin, reply.status_code, reply.text)
