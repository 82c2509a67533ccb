"""The simulator's fault controls for the feed side: raw frames of any shape, a token refused
after the upgrade (with an error frame or a bare close), and connections counted per slot."""

from __future__ import annotations

import base64
import json

import pytest
import websocket

from ticker.feed import protocol
from ticker.sim.stream import SLOT_HEADER, TOKEN_DIED

TEXT, BINARY, CLOSE = websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY, websocket.ABNF.OPCODE_CLOSE


def connect(kite_sim, api_key: str, slot: str = "") -> websocket.WebSocket:
    header = [f"{SLOT_HEADER}: {slot}"] if slot else []
    return websocket.create_connection(kite_sim.ticker_url(api_key), timeout=5, header=header,
                                       skip_utf8_validation=True)


def next_frames(ws: websocket.WebSocket, count: int) -> list[tuple[int, bytes] | str]:
    """The next `count` frames other than heartbeats: (opcode, payload), or the protocol error
    websocket-client raised for a frame it refuses (it reads such a frame whole first)."""
    frames: list[tuple[int, bytes] | str] = []
    while len(frames) < count:
        try:
            frame = ws.recv_frame()
        except websocket.WebSocketProtocolException as exc:
            frames.append(str(exc))
            continue
        if not (frame.opcode == BINARY and frame.data == protocol.HEARTBEAT):
            frames.append((frame.opcode, frame.data))
    return frames


def close_of(payload: bytes) -> tuple[int, str]:
    return int.from_bytes(payload[:2], "big"), payload[2:].decode()


def test_raw_frames_go_out_exactly_as_given(kite_sim):
    ws = connect(kite_sim, "k_frames")
    try:
        frames = [
            {"text": '{"type": "order"}'},
            {"opcode": TEXT, "data": base64.b64encode(b"\xff\xfe not utf-8").decode()},
            {"binary": base64.b64encode(b"\x00\x05\x00\x08abc").decode()},
            {"opcode": 3, "data": base64.b64encode(b"reserved").decode()},
            {"binary": base64.b64encode(b"rsv").decode(), "rsv": 4},
            {"binary": base64.b64encode(b"0123456789abcdef").decode(), "repeat": 65536},
            {"text": "after"},
        ]
        reply = kite_sim.post_json("/_sim/frames", {"frames": frames}, api_key="k_frames")
        assert reply.json()["data"] == {"connections": 1}

        assert next_frames(ws, 7) == [
            (TEXT, b'{"type": "order"}'),
            (TEXT, b"\xff\xfe not utf-8"),
            (BINARY, b"\x00\x05\x00\x08abc"),
            "Invalid opcode 3",
            "rsv is not implemented, yet",
            (BINARY, b"0123456789abcdef" * 65536),
            (TEXT, b"after"),
        ]
    finally:
        ws.close()


def test_frames_control_rejects_a_malformed_body(kite_sim):
    assert kite_sim.post_json("/_sim/frames", {"frames": [{"binary": "not base64!"}]},
                              api_key="k_frames").status_code == 400
    assert kite_sim.post_json("/_sim/frames", {"frames": [{"opcode": 16}]}, api_key="k_frames").status_code == 400
    assert kite_sim.post_json("/_sim/frames", [], api_key="k_frames").status_code == 400


def test_a_token_refused_after_the_upgrade_gets_an_error_frame_and_a_1008_close(kite_sim):
    open_before = connect(kite_sim, "k_upgrade")
    reply = kite_sim.post("/_sim/expire", api_key="k_upgrade", after_upgrade=1)
    assert reply.json()["data"] == {"connections": 1}
    (error, close) = next_frames(open_before, 2)
    assert error == (TEXT, json.dumps({"type": "error", "data": TOKEN_DIED}).encode())
    assert close[0] == CLOSE and close_of(close[1]) == (1008, TOKEN_DIED)

    later = connect(kite_sim, "k_upgrade")  # accepted: no 403 at the handshake
    (error, close) = next_frames(later, 2)
    assert "TokenException" in json.loads(error[1])["data"]
    assert close_of(close[1]) == (1008, TOKEN_DIED)
    assert kite_sim.get("/_sim/stats").json()["connections_per_key"]["k_upgrade"]["total"] == 2


def test_a_bare_refusal_is_a_1008_close_without_a_reason_or_an_error_frame(kite_sim):
    kite_sim.post("/_sim/expire", api_key="k_bare", after_upgrade=1, signal="bare")
    ws = connect(kite_sim, "k_bare")
    ((opcode, payload),) = next_frames(ws, 1)
    assert opcode == CLOSE and close_of(payload) == (1008, "")
    assert kite_sim.post("/_sim/expire", api_key="k_bare", signal="loud").status_code == 400


def test_a_plain_expiry_still_refuses_new_connections_with_403(kite_sim):
    kite_sim.post("/_sim/expire", api_key="k_bare")  # after_upgrade not given: back to Kite's 403
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        connect(kite_sim, "k_bare")
    assert refused.value.status_code == 403


def test_connections_that_name_their_slot_are_counted_per_slot(kite_sim):
    first, second = connect(kite_sim, "k_slots", "k_slots:0"), connect(kite_sim, "k_slots", "k_slots:0")
    second.close()
    other = connect(kite_sim, "k_slots", "k_slots:1")
    try:
        stats = kite_sim.get("/_sim/stats").json()
        assert stats["connections_per_slot"]["k_slots:0"]["max"] == 2
        assert stats["connections_per_slot"]["k_slots:1"] == {"now": 1, "max": 1}
        slots = {c["slot"] for c in stats["connections"] if c["api_key"] == "k_slots"}
        assert slots == {"k_slots:0", "k_slots:1"}
    finally:
        first.close()
        other.close()
