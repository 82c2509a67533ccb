"""Parallel test runs (pytest-xdist's `-n`): each worker is a test run of its own.

Two workers must never meet: their Celery workers would take each other's tasks, their shards
would fight over the same slots, and a flush by one would empty the other's Redis. So each
worker gets a Redis server of its own (on a free port, with the database numbers the run was
given) and PostgreSQL databases named after it (`ticker_test_1a2b3c_gw0`, `…_gw0_pool`, …). A run
in one process (`-n 0`) is the worker `solo`. The `1a2b3c` names the checkout, so two checkouts
of the project on one machine (a clone beside a worktree) running their tests at once never
share a database either.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import tempfile
from pathlib import Path

from tests.support.processes import Process, free_port, port_open, wait_for

CHECKOUT = hashlib.sha1(str(Path(__file__).resolve().parents[2]).encode()).hexdigest()[:6]
# The run's settings, as tests/conftest.py and ticker.config.TestConfig read them.
SETTINGS = {
    "TEST_REDIS_URL": "redis://127.0.0.1:6379/9",
    "TEST_ISOLATED_REDIS_URL": "redis://127.0.0.1:6379/10",
    "TEST_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/ticker_test_{CHECKOUT}",
}


def isolate_worker(worker: str) -> Process:
    """Point this process's test settings at a Redis server and databases of `worker`'s own;
    returns the Redis server, for the caller to stop once nothing uses it (and stopped at exit
    in any case, if the run ends before that)."""
    port = free_port()
    logs = Path(tempfile.mkdtemp(prefix=f"ticker-{worker}-redis-"))
    server = Process(f"redis-{worker}", ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                         "--save", "", "--appendonly", "no", "--dir", str(logs)], {}, logs)
    wait_for(lambda: port_open(port) or not server.alive(), 10, f"{worker}'s Redis server to listen")
    atexit.register(server.stop)
    assert server.alive(), server.output()
    for name in ("TEST_REDIS_URL", "TEST_ISOLATED_REDIS_URL"):
        database = os.environ.get(name, SETTINGS[name]).rsplit("/", 1)[1]
        os.environ[name] = f"redis://127.0.0.1:{port}/{database}"
    os.environ["TEST_DATABASE_URL"] = os.environ.get("TEST_DATABASE_URL", SETTINGS["TEST_DATABASE_URL"]) + f"_{worker}"
    return server
