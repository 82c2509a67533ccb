"""Extra web replicas for tests that need their own settings or several processes."""

from __future__ import annotations

import sys

import requests

from tests.conftest import start
from tests.support.processes import Process, free_port, port_open, wait_for


class Web:
    """A web replica process and its URL."""

    def __init__(self, process: Process, port: int):
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"


def start_web(processes, service_env: dict, workdir, name: str, **env: str) -> Web:
    """Start `python wsgi.py` with `env` on a free port; returns once it is healthy."""
    return start_webs(processes, service_env, workdir, [name], **env)[0]


def start_webs(processes, service_env: dict, workdir, names: list[str], **env: str) -> list[Web]:
    """Start one `python wsgi.py` per name, all at once, with `env` on free ports; returns once
    every one is healthy."""
    webs = []
    for name in names:
        port = free_port()
        argv, web_env = [sys.executable, "wsgi.py"], {**service_env, "PORT": str(port), **env}
        webs.append(Web(start(processes, name, argv, web_env, workdir), port))
    for web in webs:
        wait_until_healthy(web)
    return webs


def wait_until_healthy(web: Web) -> None:
    name, process = web.process.name, web.process
    wait_for(lambda: port_open(web.port) or not process.alive(), 30, f"{name} to listen")
    assert process.alive(), process.output()[-3000:]
    wait_for(lambda: requests.get(f"{web.url}/health/live", timeout=2).ok, 10, f"{name} to answer")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def tokens_of(database: str, segment: str, count: int, skip: int = 0) -> list[int]:
    """`count` instrument tokens of a segment in the loaded registry, after the first `skip`."""
    from sqlalchemy import text

    from ticker.db import engine_for

    with engine_for(database).connect() as connection:
        rows = connection.execute(
            text("SELECT instrument_token FROM instruments WHERE segment = :s ORDER BY 1 LIMIT :n OFFSET :o"),
            {"s": segment, "n": count, "o": skip},
        )
        return [token for (token,) in rows]
