"""Malformed messages get a clear `error`, and the connection stays usable."""

from __future__ import annotations

import pytest

from tests.support.clients import RecordingClient
from tests.support.processes import wait_for

pytestmark = pytest.mark.integration

BAD_SUBSCRIBES = [
    ({"tokens": 256265}, "bad_request"),  # not a list
    ({"tokens": ["256265"]}, "bad_request"),  # strings
    ({"tokens": [-5]}, "bad_request"),  # negative
    ({"tokens": [True]}, "bad_request"),  # a bool is not a token
    ({"tokens": [2**40]}, "bad_request"),  # beyond 32 bits
    ({"tokens": list(range(1, 10_001))}, "too_many_tokens"),  # ten thousand tokens
    ({"tokens": [1], "mode": "everything"}, "bad_request"),
    ({"instruments": ["NSE-INFY"]}, "bad_request"),
    ("subscribe me", "bad_request"),
    (None, "bad_request"),
    ({}, "bad_request"),
]


@pytest.fixture
def alice(stack, make_token):
    client = RecordingClient().connect(stack["url"], make_token("alice"))
    yield client
    client.close()


@pytest.mark.parametrize("payload,code", BAD_SUBSCRIBES)
def test_malformed_subscribe_gets_an_error_and_the_connection_stays_usable(alice, payload, code):
    reply = alice.call("subscribe", payload)

    assert reply["error"]["code"] == code and reply["error"]["message"]
    wait_for(lambda: alice.events["error"], 5, "an error event")
    assert alice.events["error"][-1]["code"] == code
    assert alice.call("ping")["server_time"]


def test_unknown_tokens_and_symbols_are_rejected_one_by_one(alice, registry):
    from tests.conftest import REDIS_URL
    from ticker.bus import keys
    from ticker.bus.connection import redis_client

    known_symbol, known_token = next(iter(redis_client(REDIS_URL).hscan(keys.REGISTRY_SYMBOLS, count=10)[1].items()))
    reply = alice.call("subscribe", {"tokens": [999_999_999], "instruments": ["NSE:NOPE", known_symbol]})

    assert reply["tokens"] == [int(known_token)]
    assert {(r["token"], r["code"]) for r in reply["rejected"]} == {
        (999_999_999, "unknown_token"), ("NSE:NOPE", "unknown_instrument")}


def test_unknown_event_gets_an_error(alice):
    reply = alice.call("subscribe_all_please", {"x": 1})
    assert reply["error"]["code"] == "unknown_event"


def test_malformed_unsubscribe_gets_an_error(alice):
    assert alice.call("unsubscribe", {"tokens": "all"})["error"]["code"] == "bad_request"
    assert alice.call("unsubscribe", [1, 2])["error"]["code"] == "bad_request"


@pytest.mark.parametrize("event", ["connect", "disconnect"])
def test_a_client_event_named_like_a_lifecycle_event_is_unknown(stack, make_token, event):
    # python-socketio hands a client's event named `connect` or `disconnect` to those handlers:
    # a second admission (counting the user again, orphaning the subscriptions' demand) or a
    # release of a connection that stays open. Both must be refused like any unknown event.
    client = RecordingClient().connect(stack["url"], make_token("lifecycle"))
    try:
        token = client.call("subscribe", {"tokens": [256265]})["tokens"]
        reply = client.call(event, ({}, {"token": make_token("lifecycle")}))
        assert reply == {"error": {"code": "unknown_event", "message": f"unknown event {event!r}"}}, reply
        assert len(client.events["connected"]) == 1
        assert client.call("unsubscribe", {"tokens": token}) == {"tokens": token, "total": 0}
    finally:
        client.close()
