"""Shared fixtures: the real Redis and PostgreSQL on this machine, a test database, JWT keys,
and the service's processes (simulator, Celery worker and beat, web replica)."""

from __future__ import annotations

import os
import sys

from tests.support.parallel import SETTINGS, isolate_worker

# In a parallel run (pytest-xdist, as pyproject.toml runs the suite) each worker is a test run
# of its own, with a Redis server and PostgreSQL databases of its own: tests/support/parallel.py.
# A run in one process (`-n 0`) is isolated the same way.
WORKER = os.environ.get("PYTEST_XDIST_WORKER") or "solo"
WORKER_REDIS = isolate_worker(WORKER)
# This process is a deployment of its own too: its Redis (and so its pub/sub channel
# namespace) is the test database's, set before anything reads the configuration.
os.environ["REDIS_URL"] = os.environ.get("TEST_REDIS_URL", SETTINGS["TEST_REDIS_URL"])
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from tests.support.processes import (
    VENV_BIN,
    Process,
    celery_argvs,
    free_port,
    port_open,
    start_redis,
    stop_all,
    wait_for,
)
from ticker import create_app
from ticker.bus.connection import redis_client
from ticker.config import TestConfig
from ticker.registry import migrate
from ticker.web.auth import dev_key_paths, mint, write_key_pair

REDIS_URL = TestConfig.REDIS_URL
DATABASE_URL = TestConfig.DATABASE_URL
# Tests that run a shard worker of their own use a second Redis database, so their worker
# owns its slot alone.
ISOLATED_REDIS_URL = os.environ.get("TEST_ISOLATED_REDIS_URL", SETTINGS["TEST_ISOLATED_REDIS_URL"])
AUDIENCE = "ticker-test"
ISSUER = "https://auth.test.invalid/"


@pytest.fixture(scope="session", autouse=True)
def worker_redis():
    """A parallel worker's own Redis server, stopped after everything that used it."""
    yield
    WORKER_REDIS.stop()


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ticker")


@pytest.fixture(scope="session")
def jwt_keys(workdir) -> tuple[Path, Path]:
    private, public = dev_key_paths(workdir / "keys")
    write_key_pair(private, public)
    return private, public


@pytest.fixture(scope="session")
def redis(workdir):
    """The test Redis database, emptied once per run."""
    client = redis_client(REDIS_URL)
    client.flushdb()
    return client


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory):
    """A client of a Redis server of the module's own, stopped at the module's end."""
    port = free_port()
    server = start_redis(port, tmp_path_factory.mktemp("private-redis"))
    yield redis_client(f"redis://127.0.0.1:{port}/0")
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A Redis Cluster of the run's own (3 masters, each with a replica), stopped at its end.
    Tests that kill a node must leave the cluster serving every slot (a replica promoted)."""
    from tests.support.cluster import LocalCluster

    cluster = LocalCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def database() -> str:
    """A fresh test database at the newest migration."""
    migrate.recreate_database(DATABASE_URL)
    return DATABASE_URL


@pytest.fixture(scope="session")
def sim_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def service_env(workdir, jwt_keys, sim_port) -> dict[str, str]:
    """The environment every service process of the test run gets."""
    private, public = jwt_keys
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KITE_", "JWT_", "WATCHLIST"))}
    env.update(
        PATH=f"{VENV_BIN}:{env.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
        TICKER_ENV="test",
        TICKER_INSTANCE_DIR=str(workdir / "instance"),
        REDIS_URL=REDIS_URL,
        DATABASE_URL=DATABASE_URL,
        KITE_API_ROOT=f"http://127.0.0.1:{sim_port}",
        KITE_TICKER_ROOT=f"ws://127.0.0.1:{sim_port}",
        KITE_LOGIN_ROOT=f"http://127.0.0.1:{sim_port}",
        JWT_PUBLIC_KEY_FILE=str(public),
        JWT_PRIVATE_KEY_FILE=str(private),
        JWT_AUDIENCE=AUDIENCE,
        JWT_ISSUER=ISSUER,
        UNSUBSCRIBE_GRACE_SECS="2",
        QUOTE_HOLD_SECS="2",
        CANDLE_INTERVALS="second,minute,5minute,15minute,60minute",  # every interval's path is tested
        CORS_ALLOWED_ORIGINS="*",
        WEB_HOST="127.0.0.1",  # given PORT, a web replica would listen on every interface
    )
    return env


@pytest.fixture(scope="session")
def app(service_env):
    """An in-process app configured like the service processes (for minting tokens, loading
    the registry and inspecting state)."""
    app = create_app(TestConfig)
    app.config.update(
        KITE_API_ROOT=service_env["KITE_API_ROOT"],
        KITE_TICKER_ROOT=service_env["KITE_TICKER_ROOT"],
        JWT_PUBLIC_KEY=Path(service_env["JWT_PUBLIC_KEY_FILE"]).read_text(),
        # Loaded once: PyJWT would parse (and check) the PEM text again for every token it signs,
        # about 70 ms each, which a crowd of hundreds of users would notice.
        JWT_PRIVATE_KEY=load_pem_private_key(Path(service_env["JWT_PRIVATE_KEY_FILE"]).read_bytes(), None),
        JWT_DECODE_AUDIENCE=AUDIENCE,
        JWT_ENCODE_AUDIENCE=AUDIENCE,
        JWT_DECODE_ISSUER=ISSUER,
        JWT_ENCODE_ISSUER=ISSUER,
    )
    return app


@pytest.fixture(scope="session")
def make_token(app):
    def make(user: str = "alice", ttl: float = 3600, admin: bool = False, exchanges: list[str] | None = None) -> str:
        with app.app_context():
            return mint(user, timedelta(seconds=ttl), admin=admin, exchanges=exchanges)

    return make


@pytest.fixture(scope="session")
def processes(workdir):
    """Every process started through this fixture is stopped, by PID, at the end of the run."""
    started: list[Process] = []
    yield started
    stop_all(reversed(started))


def start(processes, name: str, argv: list[str], env: dict[str, str], workdir: Path) -> Process:
    process = Process(name, argv, env, workdir)
    processes.append(process)
    return process


@pytest.fixture(scope="session")
def sim(processes, service_env, workdir, sim_port) -> str:
    """The bundled Kite simulator; returns its HTTP root."""
    argv = [sys.executable, "-m", "ticker.sim", "--port", str(sim_port), "--seed", "7", "--tick-rate", "4"]
    process = start(processes, "sim", argv, service_env, workdir)
    wait_for(lambda: port_open(sim_port) or not process.alive(), 30, "the simulator to listen")
    assert process.alive(), process.output()
    return f"http://127.0.0.1:{sim_port}"


@pytest.fixture(scope="session")
def registry(app, sim, database, redis) -> int:
    """The simulator's instruments loaded into the test database; returns the row count."""
    from ticker.registry.loader import load_instruments

    return load_instruments(app)


@pytest.fixture(scope="session")
def stack(processes, service_env, workdir, registry) -> dict[str, object]:
    """The whole service as the Procfile runs it: the shard worker, the jobs worker, beat, the
    candle builder and one web replica."""
    web_port = free_port()
    # Its shards record what they receive, as a deployment that records does
    # (tests/feed/test_record_replay.py reads it back).
    env = {**service_env, "PORT": str(web_port), "RECORD_DIR": str(workdir / "recordings")}
    argvs = celery_argvs("test")
    worker = start(processes, "worker", argvs["worker"], env, workdir)
    jobs = start(processes, "jobs", argvs["jobs"], env, workdir)
    beat = start(processes, "beat", [
        str(VENV_BIN / "celery"), "-A", "tasks", "beat", "-s", str(workdir / "beat-schedule"), "-l", "INFO",
    ], env, workdir)
    candles = start(processes, "candles", [str(VENV_BIN / "flask"), "--app", "ticker", "candles", "run"], env, workdir)
    web = start(processes, "web", [sys.executable, "wsgi.py"], env, workdir)
    worker.wait_for_output("ready", 30)
    jobs.wait_for_output("ready", 30)
    wait_for(lambda: port_open(web_port), 30, "the web replica to listen")
    url = f"http://127.0.0.1:{web_port}"
    wait_for(lambda: requests.get(f"{url}/health", timeout=2).status_code == 200, 30, "the service to be healthy")
    return {"url": url, "worker": worker, "jobs": jobs, "beat": beat, "candles": candles, "web": web,
            "record_dir": env["RECORD_DIR"]}
