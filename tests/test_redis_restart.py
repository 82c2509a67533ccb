"""Redis restarted under a running service: every part reconnects and resumes by itself.

The service runs against a Redis server of its own (so the machine's Redis, shared with other
tests, is never touched): simulator, Celery worker and beat, a web replica, and a subscribed
Socket.IO client. Redis is killed with SIGKILL and started again, empty, on the same port.
"""

from __future__ import annotations

import sys

import pytest
import redis as redis_lib
import requests
from sqlalchemy import text

from tests.support.clients import RecordingClient
from tests.support.processes import VENV_BIN, Process, free_port, port_open, stop_all, wait_for
from ticker.db import engine_for

pytestmark = pytest.mark.integration


def start_redis(port: int, workdir, name: str) -> Process:
    process = Process(name, ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)], {}, workdir)
    wait_for(lambda: port_open(port), 10, f"{name} to listen")
    return process


@pytest.fixture
def private_stack(service_env, registry, database, tmp_path, make_token):
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    servers = [start_redis(port, tmp_path, "redis-1")]
    web_port = free_port()
    env = {**service_env, "REDIS_URL": url, "PORT": str(web_port), "TICKER_CHANNEL_NAMESPACE": "restart"}
    processes = [
        Process("r-worker", [str(VENV_BIN / "celery"), "-A", "tasks", "worker", "-Q", "shards,default", "-n",
                             "restart@%h", "--concurrency", "3", "--max-tasks-per-child", "1", "--without-gossip",
                             "--without-mingle", "-l", "INFO"], env, tmp_path),
        Process("r-beat", [str(VENV_BIN / "celery"), "-A", "tasks", "beat", "-s", str(tmp_path / "beat"),
                           "-l", "INFO"], env, tmp_path),
        Process("r-web", [sys.executable, "wsgi.py"], env, tmp_path),
    ]
    web = f"http://127.0.0.1:{web_port}"
    wait_for(lambda: port_open(web_port), 30, "the web replica")
    wait_for(lambda: requests.get(f"{web}/health", timeout=2).status_code == 200, 40, "a healthy service")
    yield {"web": web, "port": port, "servers": servers, "tmp": tmp_path, "token": make_token("restart")}
    stop_all(processes)  # while Redis is up: a warm shutdown gives back leases
    stop_all(servers)


def test_the_service_recovers_from_a_redis_restart_without_help(private_stack, database):
    with engine_for(database).connect() as connection:
        token = connection.scalar(text("SELECT min(instrument_token) FROM instruments WHERE segment = 'BSE'"))
    client = RecordingClient().connect(private_stack["web"], private_stack["token"])
    try:
        client.call("subscribe", {"tokens": [token]})
        client.wait_for_ticks([token], count=2, timeout=15)

        private_stack["servers"][0].kill()  # SIGKILL: Redis loses everything it held
        private_stack["servers"][0].proc.wait(10)  # and its port is free for the next one
        private_stack["servers"].append(start_redis(private_stack["port"], private_stack["tmp"], "redis-2"))
        seen = len(client.ticks_for(token))

        wait_for(lambda: len(client.ticks_for(token)) >= seen + 3, 45, "ticks again after the restart")
        assert client.sio.connected  # the client never had to do anything
        assert redis_lib.Redis(port=private_stack["port"]).ping()
        wait_for(lambda: requests.get(f"{private_stack['web']}/health", timeout=2).status_code == 200, 30,
                 "the service to report healthy again")
    finally:
        client.close()
