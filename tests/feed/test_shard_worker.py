"""A real Celery shard worker: streams its slot, gives it up on shutdown, and a worker child can
run a second shard task after the first one ended (each gets a fresh process)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from tests.conftest import ISOLATED_REDIS_URL
from tests.support.processes import VENV_BIN, Process, free_port, port_open, stop_all, wait_for
from ticker.bus import keys
from ticker.bus.connection import redis_client
from ticker.bus.demand import ReplicaDemand
from ticker.db import engine_for
from ticker.metrics import ClusterCollector, render

pytestmark = pytest.mark.integration

SLOT = "sim_key:0"


@pytest.fixture
def own_redis():
    client = redis_client(ISOLATED_REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture(scope="module")
def own_sim(service_env, tmp_path_factory):
    """A simulator of these tests' own: the session's stack holds connections of the same API
    key on the session's simulator, and Kite's limit of connections per key counts them all."""
    port = free_port()
    sim = Process("shard-test-sim", [sys.executable, "-m", "ticker.sim", "--port", str(port), "--seed", "7",
                                     "--tick-rate", "4"], service_env, tmp_path_factory.mktemp("shard-sim"))
    try:
        wait_for(lambda: port_open(port), 30, "the simulator")
        yield f"127.0.0.1:{port}"
    finally:
        sim.stop()


@pytest.fixture
def worker_env(service_env, own_sim):
    return {**service_env, "REDIS_URL": ISOLATED_REDIS_URL, "KITE_API_ROOT": f"http://{own_sim}",
            "KITE_TICKER_ROOT": f"ws://{own_sim}", "KITE_LOGIN_ROOT": f"http://{own_sim}"}


def celery_worker(name: str, queue: str, *options: str) -> list[str]:
    return [str(VENV_BIN / "celery"), "-A", "tasks", "worker", "-Q", queue, "-n", f"{name}@%h", *options,
            "--without-gossip", "--without-mingle", "-l", "INFO"]


@pytest.fixture
def start_worker(worker_env, workdir, own_redis):
    """Starts the shard worker, and supervision in a jobs worker of its own, as in the Procfile;
    both are stopped at the end. (A shard worker that ran supervision too would often hand the
    shard task just dispatched to the child that ran supervision, which exits after its one task,
    and start the shard only at its next pool check, 5 s later.)"""
    started: list[Process] = []

    def start(**settings: str) -> Process:
        """`settings` override the environment of the shard worker."""
        shards = Process("shard-worker", celery_worker("shard-test", "shards", "--concurrency", "3",
                                                        "--max-tasks-per-child", "1"),
                         {**worker_env, **settings}, workdir)
        jobs = Process("jobs-worker", celery_worker("jobs-test", "default", "--concurrency", "1"), worker_env, workdir)
        started.extend([shards, jobs])
        return shards

    yield start
    stop_all(started)


def streaming_pid(client) -> int | None:
    state = client.hgetall(keys.shard_state(SLOT))
    return int(state["pid"]) if state.get("state") == "streaming" else None


@pytest.fixture
def token(database, registry) -> int:
    with engine_for(database).connect() as connection:
        return connection.scalar(text("SELECT min(instrument_token) FROM instruments WHERE segment = 'NSE'"))


def test_shard_streams_demand_and_stops_cleanly_on_warm_shutdown(own_redis, start_worker, token):
    demand = ReplicaDemand(own_redis, "test-replica")
    demand.heartbeat()
    worker = start_worker()
    wait_for(lambda: streaming_pid(own_redis), 30, "the shard to stream")
    demand.add([token], "quote")
    wait_for(lambda: own_redis.hget(keys.LAST_TICKS, token), 15, "a tick for the demanded token")

    worker.kill(signal.SIGTERM)  # a warm shutdown, as a deploy does it
    worker.proc.wait(20)
    assert worker.proc.returncode == 0
    assert not own_redis.exists(keys.shard_lease(SLOT))
    assert not own_redis.exists(keys.shard_state(SLOT))


def test_a_worker_child_runs_a_second_shard_task_after_the_first(own_redis, start_worker, worker_env, token):
    start_worker()
    first = wait_for(lambda: streaming_pid(own_redis), 30, "the first shard to stream")
    own_redis.delete(keys.shard_lease(SLOT), keys.shard_dispatched(SLOT))  # the first loses its lease
    wait_for(lambda: not own_redis.exists(keys.shard_state(SLOT)), 10, "the first shard to stop")

    subprocess.run([str(VENV_BIN / "celery"), "-A", "tasks", "call", "tasks.shards.supervise_shards"],
                   env=worker_env, check=True, capture_output=True, timeout=30)
    second = wait_for(lambda: streaming_pid(own_redis), 30, "a second shard to stream")
    assert second != first  # a fresh child process, not a second reactor in the old one
    demand = ReplicaDemand(own_redis, "test-replica")
    demand.heartbeat()
    demand.add([token], "ltp")
    wait_for(lambda: own_redis.hget(keys.LAST_TICKS, token), 5, "ticks from the second shard")


def test_a_recorder_that_cannot_write_is_counted_and_the_shard_streams_on(
        own_redis, start_worker, worker_env, workdir, token, tmp_path):
    blocked = tmp_path / "recordings"
    blocked.write_text("a file where the recording directory should be")  # no directory can be made in it
    start_worker(RECORD_DIR=str(blocked))
    wait_for(lambda: streaming_pid(own_redis), 30, "the shard to stream")
    demand = ReplicaDemand(own_redis, "test-replica")
    demand.heartbeat()
    demand.add([token], "quote")
    wait_for(lambda: own_redis.hget(keys.LAST_TICKS, token), 15, "a tick for the demanded token")

    def counted() -> dict | None:
        state = own_redis.hgetall(keys.shard_state(SLOT))
        return state if int(state.get("recorder_errors") or 0) >= 1 and int(state.get("frames") or 0) > 2 else None

    state = wait_for(counted, 10, "the recorder's fault in the shard's report")
    assert state["state"] == "streaming" and state["recorder"] == "failing", state
    assert "NotADirectoryError" in state["recorder_error"] and state["recorded_frames"] == "0", state

    metrics = {(s.name, s.labels.get("slot")): s.value for family in text_string_to_metric_families(
        render(ClusterCollector(own_redis, 3000)).decode()) for s in family.samples}
    assert metrics[("ticker_shard_recorder_errors_total", SLOT)] >= 1
    assert metrics[("ticker_shard_recorder_up", SLOT)] == 0
    assert metrics[("ticker_shard_up", SLOT)] == 1

    port = free_port()
    web = Process("recorder-web", [sys.executable, "wsgi.py"], {**worker_env, "PORT": str(port)}, workdir)
    try:
        wait_for(lambda: port_open(port), 30, "the web replica to listen")
        health = requests.get(f"http://127.0.0.1:{port}/health", timeout=10).json()
    finally:
        web.stop()
    recorder = health["checks"]["shards"]["slots"][SLOT]["recorder"]
    assert recorder["state"] == "failing" and recorder["errors"] >= 1, health
    assert "recorders failing" in health["checks"]["shards"]["reason"]
