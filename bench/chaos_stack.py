"""The whole service as real processes, for the trading-day run, with the faults' handles.

    redis-server (its own, on a free port, keeping nothing: killed, it comes back empty)
      ▲ direct: shard workers, jobs worker, beat, web1      ▲ through `redis_proxy`: web2
    simulator ◄── `feed_proxy` ◄── shard workers (two, `-Q shards`, a fresh child per shard)
      ▲ REST through `front` (the day's instruments dump; the rest forwarded): every process
    PostgreSQL database of its own: migrations, two Kite accounts, the registry
    web1, web2 (gevent) ◄── balancer (its own process: round robin, skipping dead replicas) ◄── clients

The simulator enforces small Kite limits (`PER_KEY` connections per API key, `PER_CONNECTION`
instruments per connection) over two accounts, so the pool is four slots on two keys.
Every process logs to `workdir/<name>.log`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

# The run's pub/sub channel names, here as in every process it starts (read before any ticker import).
CHANNEL_NAMESPACE = os.environ["TICKER_CHANNEL_NAMESPACE"] = "chaos"

import jwt as pyjwt  # noqa: E402
import redis as redis_lib  # noqa: E402
import requests  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402

from bench.kite_front import KiteFront  # noqa: E402
from tests.support.processes import VENV_BIN, Process, free_port, port_open, stop_all, wait_for  # noqa: E402
from tests.support.proxy import TcpProxy  # noqa: E402
from ticker.bus import keys  # noqa: E402
from ticker.bus.lease import shard_states  # noqa: E402
from ticker.db import session_for  # noqa: E402
from ticker.registry import accounts  # noqa: E402
from ticker.registry.migrate import recreate_database  # noqa: E402
from ticker.web.auth import write_key_pair  # noqa: E402

ACCOUNTS = {"k1": ("s1", "t1"), "k2": ("s2", "t2")}
PER_CONNECTION, PER_KEY = 50, 2  # Kite's are 3000 and 3: small, so the pool's limits are reached
TICK_RATE = 2.0  # market steps a second per instrument: a silence of a second is noticed
GRACE_SECS = 10  # UNSUBSCRIBE_GRACE_SECS: tokens nobody wants leave the pool within the run
JWT_TTL_SECS = 4 * 3600  # longer than any run: no JWT expires during the day
SHARD_CONCURRENCY = 4  # every worker has room for every slot, so one survivor takes all
HEALTH_TIMEOUT_SECS = 15.0  # long enough to see how slow a slow /health is (a balancer gives up sooner)


class Stack:
    """Starts, breaks and restarts the service's processes; `stop()` ends everything it started."""

    def __init__(self, workdir: Path, database_url: str):
        self.workdir = workdir
        self.database_url = database_url
        self.processes: list[Process] = []
        self.proxies: list[TcpProxy] = []
        self.redis_port, self.sim_port = free_port(), free_port()
        self.sim = f"http://127.0.0.1:{self.sim_port}"
        self.webs: dict[str, int] = {"web1": free_port(), "web2": free_port()}
        self.web_processes: dict[str, Process] = {}
        self.shard_workers: list[Process] = []
        self.balancer_port = free_port()
        self.url = f"http://127.0.0.1:{self.balancer_port}"
        self._private, self._public = workdir / "jwt-private.pem", workdir / "jwt-public.pem"
        self._workers_started = 0

    # -- bring-up --

    def start(self) -> None:
        self.redis_server = self._redis("redis-1")
        self.redis = redis_lib.Redis(port=self.redis_port, socket_timeout=5, decode_responses=True)
        self.redis_proxy = self._proxy(self.redis_port)
        self._spawn("sim", [sys.executable, "-m", "ticker.sim", "--port", str(self.sim_port), "--seed", "7",
                            "--tick-rate", str(TICK_RATE), "--sent-history", "1",
                            "--max-tokens-per-connection", str(PER_CONNECTION),
                            "--max-connections-per-key", str(PER_KEY),
                            *(f"--account={key}:{secret}:{token}" for key, (secret, token) in ACCOUNTS.items())],
                    self._base_environment())
        self.feed_proxy = self._proxy(self.sim_port)
        write_key_pair(self._private, self._public)
        recreate_database(self.database_url)
        wait_for(lambda: port_open(self.sim_port), 30, "the simulator")
        self.front = KiteFront(self.sim)
        self.env = self._environment()
        self._add_accounts()
        self._run("registry", [str(VENV_BIN / "flask"), "--app", "ticker", "instruments", "load"])
        self.shard_workers = [self.start_shard_worker() for _ in range(2)]
        self._spawn("jobs", self._celery("worker", "-Q", "default", "-n", "jobs@%h", "--concurrency", "1",
                                         "--without-gossip", "--without-mingle"))
        self._spawn("beat", self._celery("beat", "-s", str(self.workdir / "beat-schedule")))
        for name in self.webs:
            self.start_web(name)
        self._spawn("balancer", [sys.executable, "-m", "tests.support.balancer", "--port", str(self.balancer_port),
                                 *(f"127.0.0.1:{port}" for port in self.webs.values())])
        wait_for(lambda: port_open(self.balancer_port), 10, "the balancer")
        for name in self.webs:
            self.wait_healthy(name, 90)

    def _base_environment(self) -> dict[str, str]:
        inherited = {k: v for k, v in os.environ.items()
                     if not k.startswith(("KITE_", "JWT_", "WATCHLIST", "REDIS_", "DATABASE_", "TEST_", "TICKER_"))}
        return {**inherited, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1",
                "TICKER_CHANNEL_NAMESPACE": CHANNEL_NAMESPACE, "WEB_HOST": "127.0.0.1"}  # given PORT: this host only

    def _environment(self) -> dict[str, str]:
        key, (secret, token) = next(iter(ACCOUNTS.items()))
        return {
            **self._base_environment(), "TICKER_ENV": "test", "LOG_LEVEL": "INFO",
            "TICKER_INSTANCE_DIR": str(self.workdir),
            "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0", "DATABASE_URL": self.database_url,
            "KITE_API_ROOT": self.front.url, "KITE_LOGIN_ROOT": self.sim,
            "KITE_TICKER_ROOT": f"ws://{self.feed_proxy.url_host}",
            "KITE_API_KEY": key, "KITE_API_SECRET": secret, "KITE_ACCESS_TOKEN": token,
            "KITE_CONNECTIONS_PER_KEY": str(PER_KEY), "KITE_TOKENS_PER_CONNECTION": str(PER_CONNECTION),
            "UNSUBSCRIBE_GRACE_SECS": str(GRACE_SECS), "JWT_PUBLIC_KEY_FILE": str(self._public),
            "JWT_PRIVATE_KEY_FILE": str(self._private), "CORS_ALLOWED_ORIGINS": "*",
            # Every client comes from 127.0.0.1 (through the balancer): the per-address limit
            # stands for many addresses, so it must not count them as one.
            "MAX_CONNECTS_PER_ADDRESS_PER_SEC": "100000",
        }

    def _add_accounts(self) -> None:
        with session_for(self.database_url) as session:
            for api_key, (secret, token) in ACCOUNTS.items():
                accounts.add_account(session, api_key, secret, token, notify=self.redis)

    # -- processes --

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Process:
        process = Process(name, argv, self.env if env is None else env, self.workdir)
        self.processes.append(process)
        return process

    def _run(self, name: str, argv: list[str]) -> None:
        with open(self.workdir / f"{name}.log", "ab") as log:
            subprocess.run(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, check=True, timeout=300)

    def _celery(self, *args: str) -> list[str]:
        return [str(VENV_BIN / "celery"), "-A", "tasks", *args, "-l", "INFO"]

    def _redis(self, name: str) -> Process:
        process = self._spawn(name, ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                                     "--save", "", "--appendonly", "no", "--dir", str(self.workdir)], {})
        wait_for(lambda: port_open(self.redis_port) or not process.alive(), 10, f"{name} to listen")
        return process

    def _proxy(self, port: int) -> TcpProxy:
        proxy = TcpProxy(("127.0.0.1", port)).start()
        self.proxies.append(proxy)
        return proxy

    def start_shard_worker(self) -> Process:
        self._workers_started += 1
        name = f"shards{self._workers_started}"
        worker = self._spawn(name, self._celery("worker", "-Q", "shards", "-n", f"{name}@%h", "--concurrency",
                                                str(SHARD_CONCURRENCY), "--max-tasks-per-child", "1",
                                                "--without-gossip", "--without-mingle"))
        worker.wait_for_output("ready", 60)
        return worker

    def start_web(self, name: str) -> Process:
        env = {**self.env, "PORT": str(self.webs[name]), "ASYNC_MODE": "gevent"}
        if name == "web2":
            env["REDIS_URL"] = f"redis://{self.redis_proxy.url_host}/0"
        process = self._spawn(name, [sys.executable, "wsgi.py"], env)
        self.web_processes[name] = process
        wait_for(lambda: port_open(self.webs[name]) or not process.alive(), 60, f"{name} to listen")
        return process

    def health(self, name: str) -> tuple[int | None, dict]:
        """(status code, body) of the replica's /health; (None, {reason}) when it does not answer."""
        try:
            reply = requests.get(f"http://127.0.0.1:{self.webs[name]}/health", timeout=HEALTH_TIMEOUT_SECS)
            return reply.status_code, reply.json()
        except (requests.RequestException, ValueError) as exc:
            return None, {"reason": type(exc).__name__}

    def wait_healthy(self, name: str, timeout: float) -> None:
        wait_for(lambda: self.health(name)[0] == 200, timeout, f"{name} to answer /health 200", interval=0.5)

    def stop(self) -> None:
        stop_all([p for p in reversed(self.processes) if not p.name.startswith("redis")], timeout=15)
        stop_all([p for p in self.processes if p.name.startswith("redis")])
        for proxy in self.proxies:
            proxy.stop()
        if hasattr(self, "front"):
            self.front.stop()

    # -- clients --

    def jwts(self, prefix: str, count: int, admin: bool = False) -> list[str]:
        """One JWT per user, signed with a key parsed once (as `flask jwt mint` shapes them)."""
        key = serialization.load_pem_private_key(self._private.read_bytes(), password=None)
        now = int(time.time())
        return [pyjwt.encode({"sub": f"{prefix}{n}", "iat": now, "nbf": now, "exp": now + JWT_TTL_SECS,
                              "jti": f"{prefix}-{n}", "type": "access", "fresh": False, "admin": admin}, key,
                             algorithm="RS256")
                for n in range(count)]

    # -- the day's faults --

    def sim_post(self, path: str, **params: str) -> dict:
        reply = requests.post(f"{self.sim}/_sim/{path}", params=params, timeout=10)
        reply.raise_for_status()
        return reply.json()

    def sim_stats(self) -> dict:
        return requests.get(f"{self.sim}/_sim/stats", timeout=5).json()

    def login(self, api_key: str) -> tuple[int, str]:
        """A Kite login completed through the service's callback (through the balancer), as an
        operator's browser completes it; returns the callback's status and body."""
        admin = {"Authorization": f"Bearer {self.jwts('chaos-ops', 1, admin=True)[0]}"}
        url = requests.get(f"{self.url}/kite/login/{api_key}", headers=admin, timeout=10).json()["login_url"]
        page = requests.get(url, allow_redirects=False, timeout=10)  # Kite's redirect: request_token, state
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlparse(page.headers["Location"]).query))
        reply = requests.get(f"{self.url}/kite/callback/{api_key}", params=query, timeout=30)
        return reply.status_code, reply.text[:300]

    def reload_registry(self) -> None:
        """What beat sends at 08:15 IST on a trading day: the registry reload job."""
        self._run("reload-call", self._celery("call", "tasks.registry.reload_registry")[:-2])

    def busiest_shard_worker(self) -> tuple[Process, list[str]]:
        """The shard worker whose children stream the most instruments, and its slots."""
        slots: dict[int, list[str]] = {}
        load: dict[int, int] = {}
        for slot, state in shard_states(self.redis).items():
            stat = Path(f"/proc/{state.get('pid', 0)}/stat")
            if not state.get("pid") or not stat.exists():
                continue
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            slots.setdefault(parent, []).append(slot)
            load[parent] = load.get(parent, 0) + self.redis.hlen(keys.slot_tokens(slot))
        victim = max(self.shard_workers, key=lambda w: load.get(w.pid, -1))
        return victim, sorted(slots.get(victim.pid, []))

    def kill_shard_worker(self, worker: Process) -> None:
        """SIGKILL to the worker and its children at once: a host or container that dies."""
        os.killpg(worker.pid, signal.SIGKILL)
        worker.proc.wait(10)
        self.shard_workers.remove(worker)

    def kill_web(self, name: str) -> None:
        process = self.web_processes.pop(name)
        process.kill()
        process.proc.wait(10)

    def restart_redis_empty(self) -> None:
        """SIGKILL Redis and start it again on its port at once, empty."""
        self.redis_server.kill()
        self.redis_server.proc.wait(10)
        self.redis_generation = getattr(self, "redis_generation", 1) + 1
        self.redis_server = self._redis(f"redis-{self.redis_generation}")

    def later(self, seconds: float, action) -> None:
        threading.Timer(seconds, action).start()
