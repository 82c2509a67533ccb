"""Several web replicas on one host (`python -m ticker.replicas`) behind nginx with sticky sessions.

The pure planning is unit-tested; the integration test runs the launcher with two replicas
behind a real nginx (Debian's `nginx` package) loaded with deploy/nginx.conf itself, connects
Socket.IO clients over polling and over WebSocket through it, kills the replica
holding them, and watches the launcher start it again while the clients come back.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import socketio

from tests.support.clients import clients_connected
from tests.support.processes import ROOT, Process, port_open, wait_for
from ticker.replicas import ReplicaSlot, Supervisor, nginx_upstream, plan, restart_delay, usable_cores

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
INFY = 408065  # NSE:INFY


# Planning (pure).

def test_one_replica_per_usable_core_by_default_each_on_its_own_port_and_core():
    assert plan(0, 5000, [3, 1], pin=True) == [ReplicaSlot(0, 5000, 1), ReplicaSlot(1, 5001, 3)]


def test_web_concurrency_sets_the_count_and_extra_replicas_share_cores_round_robin():
    slots = plan(5, 7000, [0, 1], pin=True)
    assert [(s.port, s.core) for s in slots] == [(7000, 0), (7001, 1), (7002, 0), (7003, 1), (7004, 0)]
    assert {s.core for s in plan(3, 7000, [0, 1], pin=False)} == {None}


def test_a_plan_that_cannot_run_is_refused():
    with pytest.raises(ValueError):
        plan(-1, 5000, [0], pin=True)
    with pytest.raises(ValueError):
        plan(2, 65535, [0], pin=True)
    with pytest.raises(ValueError, match="more than 4 replicas per core"):
        plan(5000, 5000, [0, 1], pin=True)
    assert len(plan(8, 5000, [0, 1], pin=True)) == 8  # four a core: allowed


def test_the_upstream_is_sticky_and_names_every_replica():
    text = nginx_upstream(plan(2, 5000, [0, 1], pin=True), "web")
    block = re.search(r"upstream ticker_web \{(.*?)\}", text, re.S).group(1)
    assert block.split("\n")[1].strip() == "ip_hash;"
    assert re.findall(r"server (\S+) ", block) == ["web:5000", "web:5001"]


def test_restarts_back_off_from_one_second_to_thirty():
    assert [restart_delay(n) for n in (1, 2, 3, 4, 5, 6, 7, 20)] == [1, 2, 4, 8, 16, 30, 30, 30]


def test_a_replica_that_keeps_failing_is_started_again_with_a_growing_wait(caplog):
    """A replica that cannot start (a port taken, a bad setting) is retried, never in a spin."""
    slots = plan(1, 5000, usable_cores(), pin=True)
    supervisor = Supervisor(slots, argv=[sys.executable, "-c", "import sys; sys.exit(3)"])
    replica = supervisor.replicas[0]
    replica.start(supervisor.argv)
    waits = []
    for _ in range(3):
        replica.proc.wait(10)
        supervisor.tend(time.monotonic())  # notes the exit, schedules the restart
        waits.append(round(replica.restart_at - time.monotonic()))
        supervisor.tend(replica.restart_at)  # the wait is over: started again
    assert waits == [1, 2, 4] and replica.starts == 4
    assert "replica 0 (pid" in caplog.text and "exited with code 3" in caplog.text
    replica.proc.wait(10)


def test_replicas_listen_on_loopback_unless_web_host_says_otherwise(tmp_path, monkeypatch):
    """Given PORT, a lone replica listens on every interface (a platform's router needs it);
    the launcher's replicas sit behind a proxy on this host, where that would let clients go
    round it."""
    monkeypatch.delenv("WEB_HOST", raising=False)
    monkeypatch.setenv("PORT", "5000")
    seen = tmp_path / "host"
    argv = [sys.executable, "-c", "import os, sys; open(sys.argv[1], 'w').write(os.environ['WEB_HOST'])", str(seen)]
    supervisor = Supervisor(plan(1, 5000, usable_cores(), pin=False), argv=argv)
    replica = supervisor.replicas[0]
    replica.start(supervisor.argv)
    replica.proc.wait(10)
    assert seen.read_text() == "127.0.0.1"
    monkeypatch.setenv("WEB_HOST", "0.0.0.0")  # compose: the proxy is another container
    replica.start(supervisor.argv)
    replica.proc.wait(10)
    assert seen.read_text() == "0.0.0.0"


# The real thing.

def consecutive_free_ports(count: int) -> int:
    """A base port with `count` free ports from it (bound and released together)."""
    for _ in range(50):
        sockets = []
        try:
            first = socket.socket()
            first.bind(("127.0.0.1", 0))
            sockets.append(first)
            base = first.getsockname()[1]
            for port in range(base + 1, base + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports")


def nginx_config(directory: Path, listen_port: int, upstream_file: Path) -> Path:
    """deploy/nginx-main.conf including deploy/nginx.conf, as docker-compose.yml mounts them, with
    the server's `listen` and `include` pointed at this test's port and upstream file."""
    server = (ROOT / "deploy" / "nginx.conf").read_text()
    server = server.replace("include /etc/nginx/ticker/upstream.conf;", f"include {upstream_file};")
    server = server.replace("listen 80;", f"listen 127.0.0.1:{listen_port};")
    (directory / "server.conf").write_text(server)
    main = (ROOT / "deploy" / "nginx-main.conf").read_text()
    main = main.replace("include /etc/nginx/conf.d/*.conf;", f"include {directory}/server.conf;")
    main = main.replace("worker_processes auto;", "worker_processes 1;")  # the test's traffic is small
    temp = "".join(f"    {kind}_temp_path {directory}/{kind}_temp;\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    main = main.replace("http {\n", "http {\n" + temp)  # where an unprivileged nginx may write
    path = directory / "nginx.conf"
    path.write_text(main)
    return path


def nginx_argv(directory: Path, config: Path, *extra: str) -> list[str]:
    """nginx in the foreground, its pid and logs in `directory`."""
    settings = f"daemon off; pid {directory}/nginx.pid; error_log {directory}/error.log warn;"
    return [NGINX, *extra, "-p", str(directory), "-e", str(directory / "error.log"), "-c", str(config),
            "-g", settings]


def replica_pids(output: str) -> dict[int, int]:
    """The latest pid of each replica index, from the launcher's log lines."""
    return {int(index): int(pid) for index, pid in re.findall(r"replica (\d+) started: pid (\d+)", output)}


def healthy(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code == 200
    except requests.RequestException:
        return False


class Listening:
    """A python-socketio client that reconnects by itself and subscribes to one token on every
    connect (what a Socket.IO application does), counting ticks and connects."""

    def __init__(self, url: str, jwt: str, transport: str):
        self.ticks = 0
        self.connects = 0
        self.sio = socketio.Client(reconnection=True, reconnection_delay=0.5, reconnection_delay_max=2)
        self.sio.on("connect", self._on_connect)
        self.sio.on("ticks", self._on_ticks)
        self.sio.connect(url, auth={"token": jwt}, transports=[transport], wait_timeout=10)

    def _on_connect(self) -> None:
        self.connects += 1
        self.sio.emit("subscribe", {"tokens": [INFY], "mode": "quote"})

    def _on_ticks(self, ticks: list) -> None:
        self.ticks += len(ticks)


@pytest.mark.integration
@pytest.mark.skipif(NGINX is None and not os.environ.get("CI"), reason="nginx is not installed (make packages)")
def test_replicas_behind_nginx_serve_polling_and_websocket_and_a_killed_one_comes_back(
        stack, service_env, workdir, make_token, tmp_path):
    base, proxy_port = consecutive_free_ports(2), consecutive_free_ports(1)
    upstream = tmp_path / "upstream.conf"
    env = {**service_env, "PORT": str(base), "WEB_CONCURRENCY": "2", "WEB_UPSTREAM_FILE": str(upstream),
           "LOG_LEVEL": "INFO"}
    launcher = Process("replicas", [sys.executable, "-m", "ticker.replicas"], env, tmp_path)
    nginx = None
    clients: list[Listening] = []
    try:
        wait_for(lambda: healthy(base) and healthy(base + 1), 60, "both replicas to be ready")
        assert f"127.0.0.1:{base} " in upstream.read_text() and f"127.0.0.1:{base + 1} " in upstream.read_text()
        pids = replica_pids(launcher.output())
        assert set(pids) == {0, 1}
        for slot in plan(2, base, usable_cores(), pin=True):  # each pinned to a core of its own
            status = Path(f"/proc/{pids[slot.index]}/status").read_text()
            assert re.search(r"^Cpus_allowed_list:\t(.*)$", status, re.M).group(1) == str(slot.core)

        config = nginx_config(tmp_path, proxy_port, upstream)
        subprocess.run(nginx_argv(tmp_path, config, "-t", "-q"), check=True, capture_output=True, timeout=10)
        nginx = Process("nginx", nginx_argv(tmp_path, config), {}, tmp_path)
        wait_for(lambda: port_open(proxy_port) or not nginx.alive(), 10, "nginx to listen")
        url = f"http://127.0.0.1:{proxy_port}"

        # Polling works only if every request of a session reaches the replica holding it.
        clients = [Listening(url, make_token(f"replicas-{t}"), t) for t in ("polling", "websocket")]
        wait_for(lambda: all(c.ticks >= 3 for c in clients), 20, "ticks through nginx on both transports")
        holder, = wait_for(lambda: [i for i in (0, 1) if clients_connected(f"http://127.0.0.1:{base + i}") == 2],
                           10,
                           "one replica to hold both clients (ip_hash: one client address)")

        launcher_log = launcher.output()
        os.kill(pids[holder], signal.SIGKILL)  # the replica crashes
        before = [c.ticks for c in clients]
        wait_for(lambda: all(c.connects >= 2 for c in clients), 30, "the clients to reconnect through nginx")
        wait_for(lambda: all(c.ticks >= b + 3 for c, b in zip(clients, before, strict=True)), 20,
                 "ticks again on both transports")

        wait_for(lambda: replica_pids(launcher.output()).get(holder, pids[holder]) != pids[holder], 15,
                 "the launcher to start the killed replica again")
        wait_for(lambda: healthy(base + holder), 60, "the restarted replica to be ready")
        log = launcher.output()[len(launcher_log):]
        assert f"replica {holder} (pid {pids[holder]}, port {base + holder}) exited with signal 9" in log
        assert f"replica {holder} started: pid {replica_pids(log)[holder]}, 127.0.0.1:{base + holder}" in log
        assert replica_pids(log).keys() == {holder}, "the other replica kept running"
        assert launcher.alive()
    finally:
        for client in clients:
            client.sio.disconnect()
        if nginx is not None:
            nginx.stop()
        launcher.proc.send_signal(signal.SIGTERM)
        launcher.proc.wait(20)
        launcher.stop()
    output = launcher.log_path.read_text()
    assert launcher.proc.returncode == 0 and "msg=stopped" in output, output[-3000:]
    for pid in replica_pids(output).values():  # no replica outlives the launcher
        assert not Path(f"/proc/{pid}").exists() or "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
