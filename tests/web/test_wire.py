"""WebSocket framing of the frames the fan-out writes itself (pure logic), read back by a
WebSocket client implementation."""

from __future__ import annotations

import pytest
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import TextMessage

from ticker.web.wire import compressed, text_frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_a_text_frame_of_any_size_reads_back_as_one_message(size):
    payload = ('42["ticks",[' + "x" * size + "]]").encode()
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(text_frame(payload))
    events = list(client.events())
    assert len(events) == 1 and isinstance(events[0], TextMessage)
    assert events[0].data == payload.decode() and events[0].message_finished


def test_utf8_payloads_are_framed_by_their_length_in_bytes():
    payload = '42["ticks",[{"tradingsymbol":"₹ÜNICODE"}]]'.encode()
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(text_frame(payload) + text_frame(b"3"))
    assert [e.data for e in client.events()] == [payload.decode(), "3"]


def test_only_connections_that_offered_deflate_are_compressed():
    assert compressed({"HTTP_SEC_WEBSOCKET_EXTENSIONS": "permessage-deflate; client_max_window_bits"})
    assert not compressed({})
