"""Real processes for integration tests: started with an environment, logged to a file,
waited for, and stopped by their PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def celery_argvs(name: str, shard_concurrency: int = 3) -> dict[str, list[str]]:
    """The Procfile's two Celery workers: `worker` runs shards (one fresh child per shard task),
    `jobs` runs everything else (supervision, registry loads, token checks) in one child."""
    common = ["--without-gossip", "--without-mingle", "-l", "INFO"]
    return {
        "worker": [str(VENV_BIN / "celery"), "-A", "tasks", "worker", "-Q", "shards", "-n", f"{name}-shards@%h",
                   "--concurrency", str(shard_concurrency), "--max-tasks-per-child", "1", *common],
        "jobs": [str(VENV_BIN / "celery"), "-A", "tasks", "worker", "-Q", "default", "-n", f"{name}-jobs@%h",
                 "--concurrency", "1", *common],
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.1):
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Process:
    """A child process of the test run, in its own process group so its children stop too."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.terminated = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float = 20) -> None:
        def seen():
            if not self.alive():
                raise AssertionError(f"{self.name} exited ({self.proc.returncode}):\n{self.output()[-3000:]}")
            return text in self.output()

        wait_for(seen, timeout, f"{self.name} to print {text!r}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the process alone (not its group): what a crash of this one process looks like."""
        if self.alive():
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        """SIGTERM the process, once: a warm shutdown for Celery."""
        if self.alive() and not self.terminated:
            os.kill(self.pid, signal.SIGTERM)
            self.terminated = True

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM the process (a warm shutdown for Celery), then SIGKILL its whole group."""
        self.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(5)
        self.log.close()


def stop_all(processes: Iterable[Process], timeout: float = 10) -> None:
    """Stop several processes at once: each gets SIGTERM first, so their shutdowns overlap,
    then each is waited for (all within `timeout`) and what is left of its group killed."""
    processes = list(processes)
    for process in processes:
        process.terminate()
    deadline = time.monotonic() + timeout
    for process in processes:
        process.stop(max(0.0, deadline - time.monotonic()))


def start_redis(port: int, workdir: Path, name: str = "redis") -> Process:
    """A Redis server of a test's own on `port`, keeping nothing on disk (so a restart on the
    same port starts empty); returns once it listens."""
    process = Process(name, ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)], {}, workdir)
    wait_for(lambda: port_open(port) or not process.alive(), 10, f"{name} to listen")
    assert process.alive(), process.output()
    return process


def simulator_env(sim_port: int) -> dict[str, str]:
    """The settings that point the service's Kite clients at a simulator on `sim_port`."""
    sim = f"127.0.0.1:{sim_port}"
    return {"KITE_API_ROOT": f"http://{sim}", "KITE_TICKER_ROOT": f"ws://{sim}", "KITE_LOGIN_ROOT": f"http://{sim}"}


def service_processes(name: str, env: dict[str, str], workdir: Path, sim_port: int,
                      webs: dict[str, int]) -> list[Process]:
    """The whole service for a test of its own, started: a simulator on `sim_port`, the
    Procfile's two Celery workers and beat, and a web replica per `webs` entry (async mode ->
    port; "" keeps `env`'s mode), the replicas last. `name` prefixes the processes' names."""
    argvs = celery_argvs(name)
    return [
        Process(f"{name}-sim", [sys.executable, "-m", "ticker.sim", "--port", str(sim_port), "--seed", "7",
                                "--tick-rate", "4"], env, workdir),
        Process(f"{name}-worker", argvs["worker"], env, workdir),
        Process(f"{name}-jobs", argvs["jobs"], env, workdir),
        Process(f"{name}-beat", [str(VENV_BIN / "celery"), "-A", "tasks", "beat", "-s", str(workdir / "beat"),
                                 "-l", "INFO"], env, workdir),
        *(Process(f"{name}-web-{mode}" if mode else f"{name}-web", [sys.executable, "wsgi.py"],
                  {**env, "PORT": str(port), **({"ASYNC_MODE": mode} if mode else {})}, workdir)
          for mode, port in webs.items()),
    ]
