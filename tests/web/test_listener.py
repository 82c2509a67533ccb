"""The tick listener against the real Redis, under gevent as in a web replica: every batch
published reaches delivery, even when Redis's writes reach it in pieces."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest
import redis as redis_lib

from tests.support.processes import free_port, wait_for
from tests.support.sentinel import MASTER_NAME, UNDEMOTABLE, SentinelDeployment
from ticker.bus import keys
from ticker.bus.connection import redis_client
from ticker.bus.ticks import encode, pack

pytestmark = pytest.mark.integration

BURSTS, PER_BATCH = 3, 4
SEGMENT = 0x0F  # a segment no exchange uses: these ticks cannot be mistaken for a running stack's

LISTENER = """
import sys, time
SEGMENT = int(sys.argv[3])
from gevent import monkey
monkey.patch_all()
import gevent
from ticker.bus import keys
from ticker.bus.connection import redis_client
from ticker.web.listener import TickListener

expected = int(sys.argv[2])
received = []
batches = []

def deliver(batch):  # this test's ticks only: a running stack may publish on the same channels
    mine = [tick for tick in batch if tick[0][0] & 0xFF == SEGMENT]
    received.extend(mine)
    batches.extend(mine[:1])

listener = TickListener(redis_client(sys.argv[1]), keys.listener_wake("test-listener"),
                        lambda: set(range(keys.TICK_BUCKETS)), deliver, lambda: False,
                        lambda channel, notice: None, sleep=gevent.sleep)
gevent.spawn(listener.run_forever)
assert listener.wait_live(set(range(keys.TICK_BUCKETS)), timeout=10)
print("live", flush=True)
deadline = time.monotonic() + 10
while len(received) < expected and time.monotonic() < deadline:
    gevent.sleep(0.05)
gevent.sleep(0.3)  # anything beyond what was published would show too
print(len(received), len(batches), flush=True)
"""


class TricklingProxy:
    """Forwards TCP to Redis; what Redis sends back arrives in 1,000-byte pieces a moment
    apart, as when Redis, or the machine, is busy between two writes to a subscriber."""

    def __init__(self, host: str, port: int):
        self.upstream = (host, port)
        self.server = socket.create_server(("127.0.0.1", free_port()))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            redis_side = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, redis_side, 0), daemon=True).start()
            threading.Thread(target=self._pump, args=(redis_side, client, 1000), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket, piece: int) -> None:
        try:
            while data := source.recv(65536):
                for at in range(0, len(data), piece or len(data)):
                    target.sendall(data[at:at + (piece or len(data))])
                    if piece:
                        time.sleep(0.001)
        except OSError:
            pass
        finally:
            target.close()

    def close(self) -> None:
        self.server.close()


def batch(bucket: int, size: int) -> bytes:
    ticks = [{"instrument_token": ((bucket + keys.TICK_BUCKETS * i) << 8) | SEGMENT, "seq": 1, "epoch": 1,
              "ingest_ts": 1, "mode": "full", "depth": "x" * 1000} for i in range(size)]
    return pack(ticks, [encode(t) for t in ticks])


def test_a_burst_of_large_batches_on_every_bucket_arrives_whole(redis):
    # A read that gave up on a message in mid-arrival made redis-py reconnect, and the rest of
    # the burst was lost.
    expected = BURSTS * keys.TICK_BUCKETS * PER_BATCH
    url = redis.connection_pool.connection_kwargs
    proxy = TricklingProxy(url["host"], url["port"])
    redis_url = f"redis://127.0.0.1:{proxy.port}/{url['db']}"
    listener = subprocess.Popen([sys.executable, "-c", LISTENER, redis_url, str(expected), str(SEGMENT)],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == "live"
        for _ in range(BURSTS):
            pipe = redis.pipeline(transaction=False)
            for bucket in range(keys.TICK_BUCKETS):
                pipe.publish(keys.tick_channel(bucket), batch(bucket, PER_BATCH))
            pipe.execute()
        received, batches = map(int, listener.stdout.readline().split())
    finally:
        listener.kill()
        listener.wait()
        proxy.close()
    assert (received, batches) == (expected, BURSTS * keys.TICK_BUCKETS)


FOLLOWER = """
import sys
from gevent import monkey
monkey.patch_all()
import gevent
from ticker.bus import keys
from ticker.bus.connection import redis_client
from ticker.web.listener import TickListener

url = sys.argv[1]

def deliver(batch):
    for row, _ in batch:
        print("tick", row[0], flush=True)

listener = TickListener(redis_client(url), keys.listener_wake("failover-listener"), lambda: {0}, deliver,
                        lambda: False, lambda channel, notice: None, sleep=gevent.sleep)
gevent.spawn(listener.run_forever)

def loops():  # what a replica's own loops do every second (track_upstream), through their pool
    background = redis_client(url, "background")
    while True:
        try:
            background.ping()
        except Exception:
            pass
        gevent.sleep(1)

gevent.spawn(loops)
assert listener.wait_live({0}, timeout=10)
print("live", flush=True)
restarts = 0
while True:
    gevent.sleep(0.1)
    if listener.reconnects != restarts:
        restarts = listener.reconnects
        print("restarted", listener.last_failure, flush=True)
"""


def bucket_zero_batch(number: int) -> tuple[int, bytes]:
    token = ((keys.TICK_BUCKETS * number) << 8) | SEGMENT
    tick = {"instrument_token": token, "seq": 1, "epoch": 1, "ingest_ts": 1, "mode": "ltp", "last_price": 1.0}
    return token, pack([tick], [encode(tick)])


def test_the_listener_follows_a_failover_whose_old_master_stays_up(tmp_path):
    """Behind Sentinel, a master cut off from the sentinels (here: one they cannot demote) stays
    up and answers the listener's pings; every shard publishes to the new master meanwhile. The
    listener must move there as soon as its process hears of the new master, not hear nothing."""
    deployment = SentinelDeployment(tmp_path, master_args=UNDEMOTABLE).start()
    listener = None
    try:
        deployment.wait_ready()
        url = deployment.url(0)
        listener = subprocess.Popen([sys.executable, "-c", FOLLOWER, url], stdout=subprocess.PIPE, text=True)
        lines: list[str] = []
        threading.Thread(target=lambda: lines.extend(iter(listener.stdout.readline, "")), daemon=True).start()
        wait_for(lambda: "live\n" in lines, 20, "the listener to subscribe")
        publisher = redis_client(url)
        before, batch_before = bucket_zero_batch(1)
        publisher.publish(keys.tick_channel(0), batch_before)
        wait_for(lambda: f"tick {before}\n" in lines, 5, "a batch through the first master")

        redis_lib.Redis(port=deployment.sentinel_ports[0]).sentinel_failover(MASTER_NAME)
        wait_for(lambda: deployment.master_address() == ("127.0.0.1", deployment.replica_port), 15,
                 "the sentinels to name the replica master")
        promoted = redis_lib.Redis(port=deployment.replica_port)  # where the shards publish now
        after, batch_after = bucket_zero_batch(2)
        wait_for(lambda: promoted.publish(keys.tick_channel(0), batch_after) is not None
                 and f"tick {after}\n" in lines, 10, "a batch through the new master", interval=0.3)
        assert any(line.startswith("restarted") and "no longer the master" in line for line in lines), lines
        assert redis_lib.Redis(port=deployment.master_port).info("replication")["role"] == "master"  # still up
    finally:
        if listener is not None:
            listener.kill()
            listener.wait()
        deployment.stop()
