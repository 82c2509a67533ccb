"""REDIS_URL naming a Redis Sentinel deployment: the form it takes, and every kind of client the
service builds from it (the client factory's pools, a pub/sub pool like the tick listener's, the
Socket.IO message queue's emitter, kombu's broker connection) reaching the master the sentinels
name, and the same client following a failover. Against real redis-server processes: a master,
a replica and three sentinels of the module's own (tests/support/sentinel.py)."""

from __future__ import annotations

import time

import pytest
import redis
from kombu import Connection

from tests.support.processes import wait_for
from tests.support.sentinel import MASTER_NAME, UNDEMOTABLE, SentinelDeployment
from ticker.bus.connection import (
    MASTER_CHECK_SECS,
    MasterMoved,
    PoolExhausted,
    celery_broker,
    check_master,
    connection_pool,
    master_moved,
    pool_like,
    redis_client,
)
from ticker.config import SentinelUrl, _channel_namespace


def test_the_sentinel_form_of_redis_url():
    url = "redis+sentinel://:p%40ss@10.0.0.1:26380,sentinel-2,[::1]:26381/3/ticker"
    assert SentinelUrl.parse(url) == SentinelUrl(
        sentinels=(("10.0.0.1", 26380), ("sentinel-2", 26379), ("::1", 26381)), master_name="ticker", db=3,
        password="p@ss")
    assert SentinelUrl.parse("redis+sentinel://u:p@h/0/m").username == "u"
    assert SentinelUrl.parse("redis://127.0.0.1:6379/0") is None  # one server: redis-py reads it
    for malformed in ("redis+sentinel://h/ticker", "redis+sentinel:///0/ticker", "redis+sentinel://h:x/0/m",
                      "redis+sentinel://h/0/", "redis+sentinel://h/m/0"):
        with pytest.raises(ValueError):
            SentinelUrl.parse(malformed)


def test_the_channel_namespace_is_the_database_number_whatever_the_form():
    # Moving a deployment behind Sentinel keeps its pub/sub channels (and so a rolling move works).
    assert _channel_namespace("redis+sentinel://h1,h2/4/ticker") == _channel_namespace("redis://h:6379/4") == "db4"


def test_celery_gets_kombus_spelling_of_the_same_deployment():
    url, options = celery_broker("redis+sentinel://:p%40ss@h1:26380,[::1]:26381/2/ticker")
    assert url == "sentinel://:p%40ss@h1:26380/2;sentinel://:p%40ss@[::1]:26381/2"
    assert options["master_name"] == "ticker"
    assert options["sentinel_kwargs"]["retry"].get_retries() == 0  # the next sentinel is the retry
    assert celery_broker("redis://h:6379/1") == ("redis://h:6379/1", {})


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    sentinels = SentinelDeployment(tmp_path_factory.mktemp("sentinel")).start()
    try:
        sentinels.wait_ready()
        yield sentinels
    finally:
        sentinels.stop()


@pytest.mark.integration
def test_the_client_factory_reaches_the_master_the_sentinels_name(deployment):
    client = redis_client(deployment.url(3))
    client.set("sentinel-test", "written")
    assert redis.Redis(port=deployment.master_port, db=3).get("sentinel-test") == b"written"

    # A pool like the tick listener's: raw replies, pub/sub, same master.
    raw = redis.Redis(connection_pool=pool_like(client.connection_pool, 4, decode_responses=False))
    pubsub = raw.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("sentinel-test-channel")
    wait_for(lambda: client.publish("sentinel-test-channel", b"\x00tick") == 1, 5, "the subscription")
    message = wait_for(lambda: pubsub.get_message(timeout=0.5), 5, "the message")
    assert message["data"] == b"\x00tick"
    pubsub.close()


@pytest.mark.integration
def test_a_busy_sentinel_pool_makes_callers_wait_then_says_pool_exhausted(deployment):
    pool = connection_pool(deployment.url(), max_connections=1, timeout=0.3)
    client = redis.Redis(connection_pool=pool)
    held = pool.get_connection()
    started = time.monotonic()
    with pytest.raises(PoolExhausted):
        client.ping()
    assert time.monotonic() - started >= 0.3
    pool.release(held)
    assert client.ping()


@pytest.mark.integration
def test_the_broker_connection_celery_gets_works_through_the_sentinels(deployment):
    url, options = celery_broker(deployment.url(5))
    with Connection(url, transport_options=options) as connection:
        queue = connection.SimpleQueue("sentinel-test")
        queue.put({"hello": "broker"})
        message = queue.get(timeout=5)
        message.ack()
        assert message.payload == {"hello": "broker"}
        queue.close()
    assert redis.Redis(port=deployment.master_port, db=5).exists("_kombu.binding.sentinel-test")


@pytest.mark.integration
def test_after_a_failover_the_same_client_writes_to_the_promoted_replica(deployment):
    """A manual failover (`SENTINEL FAILOVER`): the old master stays up and is demoted to a
    replica, so a pooled connection to it answers READONLY; the client must move, not fail for
    good. (A write that reached the old master just before its demotion is lost with it: Sentinel
    replicates asynchronously. The bus epoch and the lease history allow for exactly that:
    tests/bus/test_promotion.py.)"""
    client = redis_client(deployment.url(6), "background")
    client.set("before", "1")
    pool = client.connection_pool  # its connection to the old master now waits, idle, in the pool
    redis.Redis(port=deployment.sentinel_ports[0]).sentinel_failover(MASTER_NAME)
    wait_for(lambda: deployment.master_address() == ("127.0.0.1", deployment.replica_port), 15,
             "the sentinels to name the replica master")
    promoted = redis.Redis(port=deployment.replica_port, db=6)
    attempts = iter(range(1000))

    def written_to_the_promoted_replica() -> bool:
        value = str(next(attempts))
        try:
            client.set("after", value)
        except redis.ConnectionError:  # the demoted master's READONLY, at most once: the retry moves
            return False
        return promoted.get("after") == value.encode()

    wait_for(written_to_the_promoted_replica, 15, "writes to reach the promoted replica", interval=0.2)
    demoted = redis.Redis(port=deployment.master_port)
    wait_for(lambda: demoted.info("replication")["role"] == "slave", 15, "the old master demoted")
    assert written_to_the_promoted_replica()
    assert client.connection_pool is pool  # the same client and pool: nothing was rebuilt


@pytest.mark.integration
def test_clients_leave_an_old_master_that_stays_up(tmp_path):
    deployment = SentinelDeployment(tmp_path, master_args=UNDEMOTABLE).start()
    try:
        deployment.wait_ready()
        client = redis_client(deployment.url(2), "background")
        client.set("where", "old")  # its connection to the old master waits, idle, in the pool
        # A subscriber like the tick listener's and the message queue's, on a connection never given back.
        pubsub = redis.Redis(connection_pool=pool_like(client.connection_pool, 4)).pubsub()
        pubsub.subscribe("sentinel-test-channel")
        assert pubsub.get_message(timeout=2)["type"] == "subscribe"
        assert not master_moved(pubsub.connection)

        redis.Redis(port=deployment.sentinel_ports[0]).sentinel_failover(MASTER_NAME)
        wait_for(lambda: deployment.master_address() == ("127.0.0.1", deployment.replica_port), 15,
                 "the sentinels to name the replica master")
        old = redis.Redis(port=deployment.master_port, db=2)
        promoted = redis.Redis(port=deployment.replica_port, db=2)
        attempts = iter(range(1000))

        def written_to_the_promoted_replica() -> bool:
            value = str(next(attempts))
            client.set("where", value)
            return promoted.get("where") == value.encode()

        wait_for(written_to_the_promoted_replica, 2 * MASTER_CHECK_SECS + 1, "writes to reach the promoted replica",
                 interval=0.2)
        assert old.info("replication")["role"] == "master"  # still up, still taking writes: not for us
        assert master_moved(pubsub.connection)  # the subscriber knows to subscribe again, at the new master
        with pytest.raises(MasterMoved):
            check_master(pubsub.connection)
        pubsub.close()
    finally:
        deployment.stop()
