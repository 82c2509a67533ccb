"""A Redis Sentinel deployment of a test's own: a master, a replica and three sentinels, on free
loopback ports, keeping nothing on disk; failing over within a few seconds of a master's death."""

from __future__ import annotations

from pathlib import Path

import redis

from tests.support.processes import Process, free_port, port_open, stop_all, wait_for

MASTER_NAME = "ticker"
DOWN_AFTER_MS = 1000  # a master silent this long is down for a sentinel (the default is 30 s)
FAILOVER_TIMEOUT_MS = 5000
# Arguments for a master the sentinels cannot demote: what a master cut off from them (but not
# from every client) looks like to those clients. It stays up, a master, taking writes that are lost.
UNDEMOTABLE = ("--rename-command", "REPLICAOF", "", "--rename-command", "SLAVEOF", "")


def _redis_server(name: str, port: int, workdir: Path, *extra: str) -> Process:
    process = Process(name, ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir),
                             "--repl-diskless-sync-delay", "0", *extra], {}, workdir)
    wait_for(lambda: port_open(port) or not process.alive(), 10, f"{name} to listen")
    assert process.alive(), process.output()
    return process


def _sentinel_config(path: Path, port: int, master_port: int) -> Path:
    # Sentinel rewrites its file as it learns (peers, a new master): one writable file each.
    path.write_text("\n".join([
        f"port {port}", "bind 127.0.0.1", f"dir {path.parent}",
        f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2",
        f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}",
        f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}",
        f"sentinel parallel-syncs {MASTER_NAME} 1", "",
    ]))
    return path


class SentinelDeployment:
    """Start with `start()`; `url(db)` is the REDIS_URL naming it; `stop()` stops every server."""

    def __init__(self, workdir: Path, master_args: tuple[str, ...] = ()):
        """`master_args`: more redis-server arguments for the master."""
        self.workdir = workdir
        self.master_args = master_args
        self.master_port, self.replica_port = free_port(), free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.servers: dict[str, Process] = {}

    def url(self, db: int = 0) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{db}/{MASTER_NAME}"

    def start(self) -> SentinelDeployment:
        self.servers["master"] = _redis_server("master", self.master_port, self.workdir, *self.master_args)
        self.servers["replica"] = _redis_server("replica", self.replica_port, self.workdir,
                                                "--replicaof", "127.0.0.1", str(self.master_port))
        for number, port in enumerate(self.sentinel_ports, 1):
            config = _sentinel_config(self.workdir / f"sentinel-{number}.conf", port, self.master_port)
            self.servers[f"sentinel-{number}"] = Process(f"sentinel-{number}", ["redis-server", str(config),
                                                                              "--sentinel"], {}, self.workdir)
        return self

    def wait_ready(self, timeout: float = 20) -> None:
        """Until the replica is in sync and every sentinel knows the replica and the other two
        (sentinels find each other through the master, every 2 s): only then can they fail over."""
        replica = redis.Redis(port=self.replica_port)
        wait_for(lambda: replica.info("replication").get("master_link_status") == "up", timeout, "the replica in sync")
        for port in self.sentinel_ports:
            wait_for(lambda: self._knows_everyone(port), timeout, f"the sentinel on {port} to know the others")  # noqa: B023

    def _knows_everyone(self, port: int) -> bool:
        try:
            state = redis.Redis(port=port, decode_responses=True).sentinel_master(MASTER_NAME)
        except redis.RedisError:
            return False
        return state["num-other-sentinels"] == 2 and state["num-slaves"] == 1

    def master_address(self, sentinel_port: int | None = None) -> tuple[str, int] | None:
        """Where a sentinel says the master is now (None when it cannot be asked)."""
        try:
            host, port = redis.Redis(port=sentinel_port or self.sentinel_ports[0]).sentinel_get_master_addr_by_name(
                MASTER_NAME)
        except (redis.RedisError, TypeError):
            return None
        return (host.decode() if isinstance(host, bytes) else host), int(port)

    def stop(self) -> None:
        stop_all(self.servers.values(), timeout=5)
