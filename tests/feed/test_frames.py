"""Whatever Kite sends, through the shard's own frame handling (`ShardRunner.on_frame`) with the
real fenced publisher on a Redis server of this module's own: valid ticks are published as
`KiteTicker` parses them, everything else is counted per kind and dropped, and nothing but a
refusal of the token ever raises."""

from __future__ import annotations

import json
import logging
import struct
from datetime import datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kiteconnect import KiteTicker
from prometheus_client.parser import text_string_to_metric_families

from tests.feed.test_protocol import MODES, make_tick, ticks
from ticker.bus import keys
from ticker.bus.lease import ShardLease
from ticker.bus.ticks import decode
from ticker.feed import frames, protocol
from ticker.feed.connection import TokenRejected
from ticker.feed.protocol import encode_frame, encode_packet
from ticker.feed.shard import Credentials, ShardRunner, ShardSettings
from ticker.metrics import ClusterCollector, render

pytestmark = pytest.mark.integration

SLOT, API_KEY = "fuzz:0", "fuzz"
TEXT, BINARY = 0x1, 0x2
EXAMPLES = 60  # per property: about a second each
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Standard JSON (no NaN or Infinity, which the order channel's encoder writes as null).
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def client(private_redis):
    return private_redis


@pytest.fixture(scope="module")
def runner(client):
    lease = ShardLease(client, SLOT, owner="fuzz:1")
    assert lease.acquire()
    settings_ = ShardSettings(slot=SLOT, ticker_root="ws://127.0.0.1:9", capacity=50, grace_secs=1.0)
    return ShardRunner(settings_, client, lease, load_credentials=lambda: Credentials(API_KEY, "t"),
                       on_token_rejected=lambda reason: None, should_stop=lambda: False)


@pytest.fixture(scope="module")
def orders(client):
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.orders_of(API_KEY))
    yield pubsub
    pubsub.close()


def handle(runner: ShardRunner, opcode: int, data: bytes) -> None:
    runner.lease.renew()  # the publisher is fenced by the lease: keep it ours through the run
    runner.on_frame(opcode, data)


def malformed(runner: ShardRunner) -> int:
    return sum(runner.frames.malformed.values())


def snapshot(client, token: int) -> dict | None:
    raw = client.hget(keys.LAST_TICKS, token)
    return decode(raw) if raw else None


def assert_published_as_kite_parses(client, frame: bytes) -> None:
    """Each token's snapshot is KiteTicker's last tick of it in `frame`, stamped."""
    expected = {tick["instrument_token"]: tick for tick in KiteTicker("k", "t")._parse_binary(frame)}
    for token, kite_tick in expected.items():
        ours = snapshot(client, token)
        assert ours["seq"] >= 1 and ours["ingest_ts"] > 0
        for key, value in kite_tick.items():
            if isinstance(value, datetime):  # KiteTicker: naive local time; ours: ISO 8601 in IST
                assert datetime.fromisoformat(ours[key]) == value.astimezone()
            else:
                assert ours[key] == value, key


# -- the faults as found ---------------------------------------------------------------------------


def test_an_order_frame_without_data_is_counted_and_the_shard_goes_on(runner):
    before = runner.frames.malformed[frames.BAD_ORDER]
    handle(runner, TEXT, b'{"type": "order"}')
    assert runner.frames.malformed[frames.BAD_ORDER] == before + 1


def test_a_truncated_frame_is_dropped_whole_counted_and_never_fatal(runner, client):
    token = 4242 << 8 | protocol.NSE
    good = encode_frame([encode_packet(make_tick(token, last=100_00), "quote")])
    handle(runner, BINARY, good)
    published = runner.frames.ticks
    cut = encode_frame([encode_packet(make_tick(token, last=999_00), "quote"),
                        encode_packet(make_tick(token + 256), "full")])[:-10]

    handle(runner, BINARY, cut)
    assert runner.frames.malformed[frames.TRUNCATED] >= 1
    assert runner.frames.ticks == published  # not even the whole first packet
    assert snapshot(client, token)["last_price"] == 100.0


def test_an_oversized_frame_is_dropped_unparsed(runner):
    before = runner.frames.malformed[frames.OVERSIZED]
    handle(runner, BINARY, b"\x00\x01" + bytes(runner.frames.max_bytes))
    assert runner.frames.malformed[frames.OVERSIZED] == before + 1


# -- fuzzing the real path ---------------------------------------------------------------------------


@FUZZ
@given(st.lists(st.tuples(ticks(), MODES), min_size=1, max_size=6))
def test_valid_frames_are_published_as_kite_ticker_parses_them(runner, client, packets):
    frame = encode_frame([encode_packet(tick, mode) for tick, mode in packets])
    published, bad = runner.frames.ticks, malformed(runner)
    handle(runner, BINARY, frame)
    assert runner.frames.ticks == published + len(packets)
    assert malformed(runner) == bad
    assert_published_as_kite_parses(client, frame)


@st.composite
def garbled_frames(draw) -> bytes:
    """Frames whose count and lengths may lie: random packets, real packets, cuts and junk."""
    real = [encode_packet(tick, mode) for tick, mode in draw(st.lists(st.tuples(ticks(), MODES), max_size=3))]
    random_packets = draw(st.lists(st.binary(max_size=200), max_size=3))
    packets = draw(st.permutations(real + random_packets))
    body = b"".join(struct.pack(">H", draw(st.sampled_from([len(p), len(p) + 1, max(0, len(p) - 1)]))) + p
                    for p in packets)
    count = draw(st.sampled_from([len(packets), len(packets) + 1, draw(st.integers(0, 0xFFFF))]))
    return draw(st.sampled_from([struct.pack(">H", count) + body, (struct.pack(">H", count) + body)[:-1]]))


@FUZZ
@given(st.one_of(st.binary(max_size=400), garbled_frames()))
def test_any_binary_frame_is_published_or_counted_never_fatal(runner, data):
    published, bad, received = runner.frames.ticks, malformed(runner), runner.frames.frames
    handle(runner, BINARY, data)
    assert runner.frames.frames == received + 1
    try:
        expected, skipped = protocol.decode_frame(data)
    except protocol.ProtocolError:
        assert runner.frames.ticks == published and malformed(runner) == bad + 1
        return
    assert runner.frames.ticks == published + len(expected)
    assert malformed(runner) == bad + (1 if skipped else 0)


def refuses_the_token(data: bytes) -> bool:
    """Whether a text frame is an error frame naming TokenException (what must raise)."""
    message = protocol.parse_text(data) if _utf8(data) else None
    if not message or message.get("type") != "error":
        return False
    detail = message.get("data")
    return "TokenException" in (detail if isinstance(detail, str) else repr(detail))


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@FUZZ
@given(st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(str.encode),
    st.builds(lambda kind, data: json.dumps({"type": kind, "data": data}).encode(),
              st.sampled_from(["order", "error", "message", "tick", ""]) | json_values, json_values),
    st.sampled_from([b"[" * 5000, b'{"type": "error", "data": "TokenException: gone"}', b"\xff\xfe{}", b"null",
                     b'{"type": "order", "data": {"price": Infinity, "qty": 123456789012345678901234567890}}']),
))
def test_any_text_frame_is_handled_and_only_a_refused_token_raises(runner, data):
    try:
        handle(runner, TEXT, data)
    except TokenRejected:
        assert refuses_the_token(data)
    else:
        assert not refuses_the_token(data)


@FUZZ
@given(json_values)
def test_order_updates_are_published_when_they_carry_an_order(runner, orders, data):
    while orders.get_message(timeout=0):  # none left over from an example before
        pass
    bad = runner.frames.malformed[frames.BAD_ORDER]
    handle(runner, TEXT, json.dumps({"type": "order", "data": data}).encode())
    if runner.frames.malformed[frames.BAD_ORDER] == bad:
        assert isinstance(data, dict)
        message = orders.get_message(timeout=5)
        assert decode(message["data"]) == data
    else:
        assert not isinstance(data, dict) or any(isinstance(v, int) and abs(v) >= 2**63 for v in _leaves(data))


def _leaves(value):
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


@FUZZ
@given(st.integers(0, 15), st.binary(max_size=100))
def test_frames_with_any_opcode_are_handled(runner, opcode, data):
    try:
        handle(runner, opcode, data)
    except TokenRejected:
        assert refuses_the_token(data)


# -- counted, reported, and not a log flood -----------------------------------------------------------


def test_malformed_input_is_counted_per_kind_in_the_state_and_in_metrics(runner, client):
    handle(runner, TEXT, b"\xff not utf-8")
    handle(runner, TEXT, b'{"type": "sell everything"}')
    runner._report("streaming")

    state = client.hgetall(keys.shard_state(SLOT))
    assert int(state["malformed_not_utf8"]) >= 1 and int(state["malformed_unknown_type"]) >= 1
    scrape = render(ClusterCollector(client, tokens_per_account=150))
    found = {(s.labels.get("slot"), s.labels.get("kind")): s.value
             for family in text_string_to_metric_families(scrape.decode())
             for s in family.samples if s.name == "ticker_shard_malformed_frames_total"}
    assert found[(SLOT, "not_utf8")] == int(state["malformed_not_utf8"])
    assert found[(SLOT, "unknown_type")] >= 1


def test_a_flood_of_malformed_frames_logs_a_line_a_minute_per_kind(runner, caplog):
    runner.frames.quiet = frames.QuietLog(SLOT)  # what came before has logged already
    with caplog.at_level(logging.WARNING, logger="ticker.feed.frames"):
        for _ in range(500):
            handle(runner, TEXT, b"not json")
            handle(runner, BINARY, b"\x00\x09")
    lines = [r for r in caplog.records if r.name == "ticker.feed.frames"]
    assert sorted(r.kind for r in lines) == [frames.NOT_JSON, frames.TRUNCATED]
