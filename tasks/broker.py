"""kombu's Redis transport, patched where a Redis restart would stop a worker for good.

Both patches are applied when `tasks` is imported (every Celery process of the service), and
are fenced here with the versions they were written against: kombu 5.7.0 with redis-py 8.1.0.
tests/tasks/test_broker.py shows each fault on the unpatched method, so an upgrade that fixes
or moves them fails there first.

- `QoS.restore_unacked`: closing a connection whose broker went away, kombu puts the messages
  the worker had prefetched back in their queue through a client it can no longer build
  (`AttributeError: 'NoneType' object has no attribute 'hostname'`, celery/kombu#970 and #582).
  Celery calls that unrecoverable and the worker exits, so a Redis restart would stop every
  shard. The messages are still in Redis's unacked set if Redis kept its data (kombu restores
  them after the visibility timeout) and gone with it if not; either way beat's shard supervisor
  dispatches any slot without an owner again within seconds.
- `Channel._receive_one`: when the event loop says the fanout (remote control) connection is
  readable, kombu reads a reply with `PubSub.parse_response()`, which since redis-py 6 blocks
  with no timeout at all. After a Redis restart the loop sometimes reports the reconnected
  socket readable when it has nothing to read (1 restart in 3 to 15 in our runs): the worker's
  main thread then waited in `recv` forever, consuming nothing, logging nothing. Now it reads
  only what has arrived (waiting at most READ_SECS for the rest of a reply that has begun).
"""

from __future__ import annotations

import functools
import logging
from queue import Empty

from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)

READ_SECS = 5.0  # a reply that has begun to arrive: the longest wait for the rest of it


def survive_a_lost_broker(restore_unacked):
    """Wrap `QoS.restore_unacked` so that a broker gone mid-restore is logged, not fatal."""

    @functools.wraps(restore_unacked)
    def restore(self, client=None):
        try:
            return restore_unacked(self, client)
        except AttributeError as exc:
            log.warning("broker connection lost: could not put prefetched messages back (%s); "
                        "the shard supervisor re-dispatches what they carried", exc)
            self._delivered.clear()
            return None

    return restore


def never_block_on_a_quiet_socket(receive_one):
    """Wrap `Channel._receive_one` so that it reads only a reply that has begun to arrive."""

    @functools.wraps(receive_one)
    def receive(self, client):
        connection = client.connection
        if connection is not None and not connection.can_read(timeout=0):
            raise Empty()  # readable by the loop's account, not by the socket's: nothing to read
        original = client.parse_response
        client.parse_response = functools.partial(original, block=False, timeout=READ_SECS)
        try:
            return receive_one(self, client)
        finally:
            client.parse_response = original

    return receive


def install() -> None:
    kombu_redis.QoS.restore_unacked = survive_a_lost_broker(kombu_redis.QoS.restore_unacked)
    kombu_redis.Channel._receive_one = never_block_on_a_quiet_socket(kombu_redis.Channel._receive_one)
