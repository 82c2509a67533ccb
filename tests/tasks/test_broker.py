"""kombu's Redis transport as the service patches it (tasks/broker.py), against the real Redis."""

from __future__ import annotations

import threading
import time
from queue import Empty

import pytest
from kombu import Connection
from kombu.transport import redis as kombu_redis

import tasks  # noqa: F401  (installs the patches)
from tests.conftest import REDIS_URL

CHANNEL = "test-broker-fanout"


@pytest.fixture
def channel():
    connection = Connection(REDIS_URL)
    channel = connection.channel()
    client = channel.subclient
    client.subscribe(CHANNEL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not client.connection.can_read(timeout=0.1):
        pass
    client.parse_response()  # the subscribe confirmation
    yield channel
    client.close()
    connection.release()


def receive_in_thread(receive_one, channel) -> threading.Thread:
    def run():
        try:
            receive_one(channel, channel.subclient)
        except Empty:
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_unpatched_a_read_the_loop_thought_ready_waits_forever(channel, redis):
    """The fault: the event loop called `_receive_one` for a socket with nothing to read."""
    unpatched = kombu_redis.Channel._receive_one.__wrapped__
    thread = receive_in_thread(unpatched, channel)
    thread.join(2)
    assert thread.is_alive()  # still in recv, as a stuck worker's main thread was
    redis.publish(CHANNEL, "wake up")  # let it go
    thread.join(5)


def test_patched_a_read_with_nothing_to_read_returns_at_once(channel):
    started = time.monotonic()
    with pytest.raises(Empty):
        kombu_redis.Channel._receive_one(channel, channel.subclient)
    assert time.monotonic() - started < 1


def test_patched_a_message_that_arrived_is_still_read(channel, redis):
    redis.publish(CHANNEL, "not json: kombu warns and skips it")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not channel.subclient.connection.can_read(timeout=0.1):
        pass
    with pytest.raises(Empty):  # kombu's own answer to a payload it cannot decode: it was read
        kombu_redis.Channel._receive_one(channel, channel.subclient)
    assert not channel.subclient.connection.can_read(timeout=0)
