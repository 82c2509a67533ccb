"""The worker survives kombu failing to restore prefetched messages to a broker that went away
(pure logic: the failure is kombu's, reproduced with the attribute it trips on)."""

from __future__ import annotations

from kombu.transport import redis as kombu_redis

import tasks  # noqa: F401  (installs the guard, as a worker's import of the app does)


class LostChannel:
    """What kombu's channel looks like once its connection was released."""

    def conn_or_acquire(self, client=None):
        raise AttributeError("'NoneType' object has no attribute 'hostname'")


def test_restoring_prefetched_messages_without_a_broker_does_not_raise():
    qos = kombu_redis.QoS.__new__(kombu_redis.QoS)
    qos.channel = LostChannel()
    qos._delivered = {"tag-1": object()}

    assert qos.restore_unacked() is None
    assert qos._delivered == {}
