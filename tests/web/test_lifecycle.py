"""JWT expiry on an open connection, and the limits: each breach gets its documented code and
the server carries on."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.clients import RecordingClient
from tests.support.processes import wait_for
from tests.web.webproc import start_web

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def web(stack, processes, service_env, workdir):
    return start_web(processes, service_env, workdir, "web-limits", TOKEN_EXPIRY_GRACE_SECS="1.5", JWT_LEEWAY_SECS="0",
                     MAX_MESSAGES_PER_SEC="5", MAX_CONNECTIONS_PER_USER="2", MAX_CONNECTIONS="5")


@pytest.fixture
def connect(web, make_token):
    clients = []

    def connect(user: str = "alice", ttl: float = 3600) -> RecordingClient:
        client = RecordingClient().connect(web.url, make_token(user, ttl=ttl))
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close()
    time.sleep(0.2)  # let the server see them go before the next test counts connections


def test_an_expired_token_is_told_then_cut_off_unless_renewed(connect, make_token):
    idle, renewing = connect("idle", ttl=2), connect("renewing", ttl=2)

    warning = wait_for(lambda: renewing.events["error"], 5, "the expiry warning")[0]
    assert warning["code"] == "token_expired" and warning["grace_secs"] == 1.5
    reply = renewing.call("reauth", {"token": make_token("renewing", ttl=600)})
    assert reply["user"] == "renewing" and reply["expires_at"] > time.time() + 500

    wait_for(lambda: not idle.sio.connected, 5, "the idle client to be disconnected")
    assert idle.events["error"][0]["code"] == "token_expired"
    time.sleep(2.0)
    assert renewing.sio.connected and renewing.call("ping")["server_time"]
    assert renewing.events["reauthed"]


def test_reauth_must_be_the_same_user_and_a_valid_token(connect, make_token):
    alice = connect("alice")
    assert alice.call("reauth", {"token": make_token("mallory")})["error"]["code"] == "token_invalid"
    assert alice.call("reauth", {"token": "not.a.jwt"})["error"]["code"] == "token_invalid"
    assert alice.call("reauth", {"token": 42})["error"]["code"] == "bad_request"
    assert alice.call("ping")["server_time"]


def test_too_many_messages_a_second_are_refused_and_the_connection_recovers(connect):
    alice = connect("chatty")
    for _ in range(20):
        alice.sio.emit("ping")

    wait_for(lambda: any(e["code"] == "rate_limited" for e in alice.events["error"]), 5, "rate_limited")
    assert len(alice.events["pong"]) <= 6
    time.sleep(1.0)
    assert alice.call("ping")["server_time"]


def test_a_user_holds_at_most_its_connections(connect, web, make_token):
    connect("dave"), connect("dave")
    error = RecordingClient().try_connect(web.url, auth={"token": make_token("dave")})
    assert error["code"] == "too_many_connections"


def test_a_full_server_refuses_with_server_busy(connect, web, make_token):
    for i in range(5):
        connect(f"user{i}")
    error = RecordingClient().try_connect(web.url, auth={"token": make_token("one-too-many")})
    assert error["code"] == "server_busy"


def test_connection_attempts_from_one_address_are_limited(stack, processes, service_env, workdir):
    web = start_web(processes, service_env, workdir, "web-attempts", MAX_CONNECTS_PER_ADDRESS_PER_SEC="3")
    with ThreadPoolExecutor(8) as pool:  # all at once, so they land within a second or two
        codes = list(pool.map(lambda _: RecordingClient().try_connect(web.url)["code"], range(8)))

    assert codes.count("rate_limited") >= 2 and codes.count("auth_required") >= 3, codes
    time.sleep(1.1)
    assert RecordingClient().try_connect(web.url)["code"] == "auth_required"


def test_admin_connections_hear_operator_control_messages(connect, web, make_token, app):
    from flask_socketio import SocketIO

    from ticker.bus import keys
    from ticker.registry.tokens import OPERATORS_ROOM

    admin = RecordingClient()
    admin.sio.on("kite_account", lambda data: admin.events["kite_account"].append(data))
    admin.connect(web.url, make_token("ops", admin=True))
    plain = connect("not-ops")
    try:
        SocketIO(message_queue=app.config["REDIS_URL"], channel=keys.SOCKETIO_CHANNEL).emit(
            "kite_account", {"api_key": "k", "token_valid": True}, to=OPERATORS_ROOM, namespace="/")
        wait_for(lambda: admin.events["kite_account"], 5, "the control message")
        assert not plain.events.get("kite_account")
    finally:
        admin.close()
