"""Fuzz the Socket.IO events against a real server process: wrong types, huge lists, deep
nesting, unknown events, huge strings. Every input gets a clear `error` (or a normal reply),
the connection stays usable, the server never crashes and does not leak."""

from __future__ import annotations

import time

import pytest
import requests
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.support.clients import RecordingClient
from tests.support.processes import wait_for
from tests.web.test_fanout import StalledClient
from tests.web.webproc import rss_kib, start_web

pytestmark = pytest.mark.integration

CODES = {"bad_request", "too_many_tokens", "unknown_event", "token_invalid", "token_expired", "auth_required",
         "token_wrong_audience", "token_wrong_issuer", "rate_limited", "token_too_large", "token_not_yet_valid",
         "token_exp_required"}
EVENTS = ["subscribe", "unsubscribe", "ping", "reauth"]
RESERVED = {"connect", "disconnect", "connect_error", "message"}  # the client library's own names

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=False),
    st.text(max_size=50),
)
# Up to 10,000 repeats of up to 4 characters: at most 480 KB of JSON even with every character
# escaped, under the 1 MB message limit (a bigger message closes the connection, tested below).
huge_strings = st.builds(lambda s, n: (s or "x") * n, st.text(max_size=4), st.integers(1, 10_000))
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=8), st.dictionaries(st.text(max_size=12), inner, max_size=8)),
    max_leaves=40,
)
token_like = st.one_of(st.integers(min_value=-5, max_value=2**40), st.text(max_size=20), st.none(), st.floats())
payloads = st.one_of(
    json_values,
    st.builds(lambda t, m: {"tokens": t, "mode": m},
              st.lists(token_like, max_size=30), st.one_of(st.text(max_size=10), json_values)),
    st.builds(lambda n: {"tokens": list(range(1, n))}, st.integers(min_value=900, max_value=60_000)),  # huge lists
    st.builds(lambda names: {"instruments": names}, st.lists(st.text(max_size=80), max_size=20)),
    st.integers(min_value=1, max_value=150).map(lambda depth: {"tokens": [1], "mode": "quote", "x": nested(depth)}),
    st.builds(lambda token: {"token": token}, st.one_of(st.text(max_size=300), huge_strings, json_values)),
    st.builds(lambda text, key: {key: text}, huge_strings, st.sampled_from(["tokens", "instruments", "mode"])),
    st.builds(lambda text: {"instruments": [text]}, huge_strings),
)
events = st.one_of(st.sampled_from(EVENTS), st.text(min_size=1, max_size=60).filter(lambda e: e not in RESERVED))


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.fixture(scope="module")
def web(stack, processes, service_env, workdir):
    return start_web(processes, service_env, workdir, "web-fuzz", MAX_MESSAGES_PER_SEC="10000")


@pytest.fixture(scope="module")
def fuzzer(web, make_token):
    client = RecordingClient().connect(web.url, make_token("fuzzer"))
    yield client
    client.close()


def check_reply(event: str, reply: object) -> None:
    if isinstance(reply, dict) and "error" in reply:
        assert reply["error"]["code"] in CODES and reply["error"]["message"], reply
    else:
        assert event in EVENTS, (event, reply)
        assert isinstance(reply, dict), reply


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(event=events, payload=payloads)
@example(event="*", payload=True)  # the catch-all's own name
def test_any_event_gets_a_clear_answer_and_the_connection_survives(web, fuzzer, event, payload):
    check_reply(event, fuzzer.call(event, payload, timeout=10))
    assert fuzzer.sio.connected
    assert web.process.alive()


def test_nesting_too_deep_to_decode_is_ignored_and_the_connection_stays_usable(web, make_token):
    # python-socketio cannot even encode these, so they go out as raw Socket.IO packets.
    raw = StalledClient(web.url, make_token("nester"))
    raw.ws.settimeout(2)
    for ack_id, depth in enumerate((900, 5_000, 100_000)):
        raw.ws.send(f'42{ack_id}["subscribe",{{"tokens":' + "[" * depth + "]" * depth + "}]")
        raw.ws.send(f'42{ack_id + 100}["ping"]')
        frames = []
        while not frames or not frames[-1].startswith(f"43{ack_id + 100}"):
            frames.append(raw.ws.recv())
        replies = [f for f in frames if f.startswith(f"43{ack_id}[")]
        assert not replies or '"bad_request"' in replies[0], frames  # a clear error, or ignored
    assert web.process.alive()


def test_a_message_over_the_size_limit_closes_only_that_connection(web, fuzzer, make_token):
    big = RecordingClient().connect(web.url, make_token("big"))
    big.sio.emit("subscribe", {"tokens": "x" * 1_100_000})  # over the 1 MB transport limit

    wait_for(lambda: not big.sio.connected, 10, "the oversized sender to be disconnected")
    assert fuzzer.call("ping")["server_time"]


def test_after_fuzzing_the_server_is_healthy_and_did_not_leak(web, fuzzer, make_token):
    before = rss_kib(web.process.pid)
    for _ in range(200):
        fuzzer.call("subscribe", {"tokens": list(range(1, 1001)), "instruments": ["X:" + "Y" * 60] * 999})
    time.sleep(0.5)

    assert rss_kib(web.process.pid) - before < 20_000
    assert fuzzer.call("ping")["server_time"]
    assert requests.get(f"{web.url}/health/live", timeout=5).ok
