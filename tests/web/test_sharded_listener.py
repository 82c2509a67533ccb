"""The cluster tick listener's liveness: a master that goes silent (SIGSTOP: no FIN, no RST) is
noticed by unanswered pings, and its buckets are subscribed again on the replica promoted in
its place, without anyone's help."""

from __future__ import annotations

import threading
import time

import pytest

from tests.support.processes import wait_for
from ticker.bus import keys
from ticker.bus.connection import tick_bus_client
from ticker.bus.lease import ShardLease
from ticker.bus.liveness import SILENT_SECS
from ticker.bus.sharded import ShardedTickPublisher
from ticker.web.sharded_listener import ShardedTickListener

pytestmark = pytest.mark.integration

SEGMENT = 0x0D


class Finished(BaseException):
    pass


def with_replica(redis_cluster) -> int:
    """The port of a master that has a connected replica (a test before may have used one up)."""
    for port in redis_cluster.masters():
        if redis_cluster.client(port).info("replication").get("connected_slaves", 0) > 0:
            return port
    pytest.skip("no master with a replica left in this run's cluster")


def test_a_silent_master_is_given_up_and_its_buckets_follow_the_failover(redis, redis_cluster):
    cluster = tick_bus_client(redis_cluster.url)
    victim = with_replica(redis_cluster)
    bucket = next(b for b in range(keys.TICK_BUCKETS)
                  if cluster.get_node_from_key(keys.bucket_tag(b)).port == victim)
    token = ((bucket + keys.TICK_BUCKETS * 2000) << 8) | SEGMENT
    received: list[int] = []
    done = threading.Event()

    def needed() -> set[int]:
        if done.is_set():
            raise Finished  # ends the listener's thread: it retries every Exception forever
        return {bucket}

    listener = ShardedTickListener(redis, cluster, "test-sharded-listener:wake", needed,
                                   lambda batch: received.extend(row[0][0] for row in batch), lambda: False,
                                   lambda *_: None)
    def listen() -> None:
        try:
            listener.run_forever()
        except Finished:
            pass

    threading.Thread(target=listen, daemon=True).start()
    wait_for(lambda: bucket in listener.live, 10, "the bucket subscribed")
    lease = ShardLease(redis, "test-sharded-listener", "a")
    assert lease.acquire()

    def renew() -> None:  # what a shard's loop does every second
        while not done.wait(1.0):
            lease.renew()

    threading.Thread(target=renew, daemon=True).start()
    publisher = ShardedTickPublisher(redis, cluster, lease)
    publisher.publish([{"tradable": True, "mode": "ltp", "instrument_token": token, "last_price": 1.0}])
    wait_for(lambda: token in received, 5, "a tick before the master goes silent")

    redis_cluster.freeze(victim)  # silent: its sockets stay open, nothing answers
    try:
        started = time.monotonic()
        wait_for(lambda: listener.down_feeds, SILENT_SECS + 5, "the silent master given up")
        assert time.monotonic() - started <= SILENT_SECS + 3
        assert not listener.report()["ok"]
        wait_for(lambda: bucket in listener.live, 30, "the bucket subscribed on the promoted replica")
        assert listener.node_of[bucket] != f"127.0.0.1:{victim}"  # the promoted replica

        count = len(received)
        wait_for(lambda: publisher.publish(
            [{"tradable": True, "mode": "ltp", "instrument_token": token, "last_price": 2.0}]) and
            len(received) > count, 10, "ticks again through the promoted master", interval=0.5)
        assert listener.report()["ok"]
    finally:
        done.set()
        redis_cluster.kill(victim)  # a stopped process dies of SIGKILL; the cluster keeps its promoted replica
        lease.release()
