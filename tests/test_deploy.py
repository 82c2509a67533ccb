"""Deployment files: docker-compose.yml validated without a Docker engine, and the Procfile's
processes run together by honcho (the Procfile runner) as a Heroku-style platform runs them,
until a client gets ticks."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.clients import RecordingClient
from tests.support.processes import ROOT, VENV_BIN, Process, free_port, wait_for
from tests.support.tls import CertificateAuthority, start_tls_redis
from ticker.registry.migrate import recreate_database
from ticker.replicas import nginx_upstream, plan

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
WEB_SERVICES = [name for name, service in SERVICES.items()
                if service.get("command") == ["python", "-m", "ticker.replicas"]]
PROCFILE = dict(line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if ": " in line)


def one_shot(service: dict) -> bool:
    return service.get("restart") == "no"


def test_every_long_running_service_has_a_health_check():
    for name, service in SERVICES.items():
        check = service.get("healthcheck", {})
        if one_shot(service):
            continue
        assert check.get("test") and not check.get("disable"), f"{name} has no health check"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name


def test_web_replicas_are_reachable_only_through_the_proxy():
    assert WEB_SERVICES == ["web"]  # one service runs a replica per core (ticker/replicas.py)
    web = SERVICES["web"]
    assert "ports" not in web, "the web service publishes a port beyond the proxy"
    assert web["expose"] == ["5000-5063"] and web["environment"]["PORT"] == "5000"
    published = {name for name, service in SERVICES.items() if service.get("ports")}
    assert published == {"proxy", "flower"}
    assert all(port.startswith("127.0.0.1:") for port in SERVICES["flower"]["ports"]), "Flower is for this host only"


def test_the_proxy_balances_the_web_replicas_with_sticky_sessions():
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    web, proxy = SERVICES["web"], SERVICES["proxy"]
    # The web service writes the upstream block into the volume nginx includes it from.
    upstream_file = web["environment"]["WEB_UPSTREAM_FILE"]
    volume, web_dir = next(v.split(":")[:2] for v in web["volumes"] if upstream_file.startswith(v.split(":")[1]))
    proxy_dir = next(v.split(":")[1] for v in proxy["volumes"] if v.split(":")[0] == volume)
    assert f"include {proxy_dir}{upstream_file[len(web_dir):]};" in conf
    upstream = nginx_upstream(plan(2, int(web["environment"]["PORT"]), [0, 1], pin=True),
                              web["environment"]["WEB_UPSTREAM_HOST"])
    assert "ip_hash;" in upstream  # a polling Socket.IO client must reach the replica holding its session
    assert re.findall(r"^ +server (\S+) ", upstream, re.M) == ["web:5000", "web:5001"]
    socketio_location = re.search(r"location /socket.io/ \{(.*?)\}", conf, re.S).group(1)
    assert "proxy_set_header Upgrade $http_upgrade;" in socketio_location
    assert "proxy_http_version 1.1;" in socketio_location
    assert re.search(r"location = /metrics \{ return 404; \}", conf)
    assert "./deploy/nginx.conf:/etc/nginx/conf.d/default.conf:ro" in proxy["volumes"]
    assert set(proxy["depends_on"]) == set(WEB_SERVICES)


def test_the_proxy_holds_as_many_clients_as_a_hosts_replicas():
    """nginx's default 1024 connections per worker (two per proxied client) would cap a host far
    below its replicas' MAX_CONNECTIONS; the main configuration raises it, with the files to match."""
    main = (ROOT / "deploy" / "nginx-main.conf").read_text()
    proxy = SERVICES["proxy"]
    assert "./deploy/nginx-main.conf:/etc/nginx/nginx.conf:ro" in proxy["volumes"]
    assert "include /etc/nginx/conf.d/*.conf;" in main
    connections = int(re.search(r"worker_connections (\d+);", main).group(1))
    files = int(re.search(r"worker_rlimit_nofile (\d+);", main).group(1))
    assert connections >= 2 * 20_000 and files >= 2 * connections and proxy["ulimits"]["nofile"] >= files


def test_references_resolve():
    volumes = set(COMPOSE.get("volumes", {}))
    for name, service in SERVICES.items():
        depends_on = service.get("depends_on", {})
        if isinstance(depends_on, list):  # the short form: started, not healthy
            depends_on = {name: {"condition": "service_started"} for name in depends_on}
        for dependency, condition in depends_on.items():
            assert dependency in SERVICES, f"{name} depends on unknown {dependency}"
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in SERVICES[dependency], f"{name} waits on {dependency}'s missing check"
            if condition["condition"] == "service_completed_successfully":
                assert one_shot(SERVICES[dependency])
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in volumes, f"{name} mounts undeclared volume {source}"
        if "build" in service:
            assert (ROOT / service["build"] / "Dockerfile").exists()


def _procfile_argv(name: str) -> list[str]:
    """A Procfile command as argv, with `${VAR:-default}` at its default."""
    return shlex.split(re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", PROCFILE[name]))


@pytest.mark.parametrize("process, service", [("replicas", "web"), ("worker", "worker"), ("jobs", "jobs"),
                                              ("release", "migrate"), ("beat", "beat")])
def test_compose_runs_the_procfile_processes(process, service):
    argv, command = _procfile_argv(process), SERVICES[service]["command"]
    if process == "beat":  # the schedule file lives where each platform can write
        argv[argv.index("-s") + 1] = command[command.index("-s") + 1]
    assert command == argv


def test_the_image_runs_as_a_user_and_checks_its_health():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER \w+", dockerfile, re.M) and "HEALTHCHECK" in dockerfile
    assert "requirements.txt" in dockerfile


@pytest.fixture(scope="module")
def managed_redis(tmp_path_factory) -> dict[str, object]:
    """A Redis as managed services hand one out: TLS only, a certificate of its own CA, a client
    certificate required (mutual TLS); and another CA, which must not verify it."""
    directory = tmp_path_factory.mktemp("managed-redis")
    ca, other = CertificateAuthority(directory, "redis-ca"), CertificateAuthority(directory, "other-ca")
    port = free_port()
    server = start_tls_redis(port, directory, ca)
    yield {"url": f"rediss://127.0.0.1:{port}/0", "ca": ca, "other_ca": other,
           "client": ca.issue("service-client", client=True)}
    server.stop()


def platform_env(service_env: dict[str, str], managed_redis: dict, database_url: str, **settings: str) -> dict:
    """What a Heroku-style platform gives each process: a `rediss://` REDIS_URL with its
    certificate settings, DATABASE_URL in Heroku's `postgres://` spelling, and no WEB_HOST (the
    runner gives `web` its PORT, as the platform does)."""
    client = managed_redis["client"]
    env = {key: value for key, value in service_env.items() if key != "WEB_HOST"}
    return {**env, "REDIS_URL": managed_redis["url"], "REDIS_SSL_CA_CERTS": str(managed_redis["ca"].ca.cert),
            "REDIS_SSL_CERTFILE": str(client.cert), "REDIS_SSL_KEYFILE": str(client.key),
            "DATABASE_URL": "postgres://" + database_url.split("://", 1)[1], **settings}


def non_loopback_address() -> str:
    """An IPv4 address of this machine that is not loopback: where a platform's router connects."""
    addresses = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=True).stdout.split()
    address = next((a for a in addresses if "." in a and not a.startswith("127.")), None)
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    return address


@pytest.mark.integration
def test_the_procfile_runs_as_a_platform_runs_it(service_env, workdir, database, make_token, managed_redis):
    """release, then web, worker, jobs, beat and sim, as a Heroku-style platform runs them: PORT
    given, no WEB_HOST, Redis over TLS with a client certificate (only its TLS port is open:
    every client, the Celery broker and the Socket.IO queue included, must speak TLS), the
    database as `postgres://`. The service answers on the machine's own address, as a router
    reaches it; a Ctrl-C (`make run`) stops it cleanly."""
    web_port, sim_port = free_port(), free_port()
    kite = f"127.0.0.1:{sim_port}"
    env = platform_env(
        service_env, managed_redis, recreate_database(f"{database}_honcho", migrate=False),
        SIM_PORT=str(sim_port), SHARD_CONCURRENCY="2", TICKER_INSTANCE_DIR=str(workdir / "honcho"),
        KITE_API_ROOT=f"http://{kite}", KITE_TICKER_ROOT=f"ws://{kite}", KITE_LOGIN_ROOT=f"http://{kite}",
    )
    Path(env["TICKER_INSTANCE_DIR"]).mkdir(exist_ok=True)
    release = ["honcho", "run", "-f", "Procfile", *_procfile_argv("release")]
    subprocess.run(release, cwd=ROOT, env=env, check=True, capture_output=True, timeout=60)
    # `make run`'s runner (scripts/run-local): honcho's Manager; the first process (web) gets PORT.
    honcho = Process("honcho", [
        str(VENV_BIN / "python"), "scripts/procfile_run.py", str(web_port), "web", "worker", "jobs", "beat", "sim",
    ], env, workdir)
    try:
        url = f"http://{non_loopback_address()}:{web_port}"
        health = check_procfile_service(honcho, url, make_token)
        assert health["checks"]["redis"]["ok"] and health["checks"]["database"]["ok"], health
        check_operator_notices(url, make_token)
        os.killpg(honcho.pid, signal.SIGINT)  # Ctrl-C in the terminal: the foreground group
        honcho.proc.wait(timeout=60)
    finally:
        honcho.stop(timeout=40)  # now: its worker and beat would outlive the test (it waits 30 s for them)
    output = honcho.log_path.read_text(errors="replace")
    for name in ("web", "worker", "jobs", "beat", "sim"):
        assert f"{name}.1 " in output, f"honcho ran no {name}"
    # A Ctrl-C is a normal stop: no lost pool worker, no tracebacks, no SIGKILL, exit 0.
    stop = output[output.index("SIGINT received"):]
    for trouble in ("WorkerLostError", "Traceback", "signal 15", "SIGKILL"):
        assert trouble not in stop, f"{trouble!r} after Ctrl-C:\n{stop[-4000:]}"
    assert honcho.proc.returncode == 0 and stop.rstrip().endswith("stopped"), stop[-2000:]


def check_operator_notices(url: str, make_token) -> None:
    """The Socket.IO message queue: an operator logs the simulator's account in, and the web
    process's `kite_account` notice reaches the operators' room through Redis."""
    operator = RecordingClient()
    operator.sio.on("kite_account", operator._recorder("kite_account"))
    admin = make_token("ops", admin=True)
    operator.connect(url, admin)
    try:
        login = requests.get(f"{url}/kite/login/sim_key", headers={"Authorization": f"Bearer {admin}"}, timeout=5)
        assert login.status_code == 200, login.text
        # The simulator redirects to its default redirect URL: this replica's callback instead.
        redirect = requests.get(login.json()["login_url"], allow_redirects=False, timeout=5)
        callback = urlsplit(redirect.headers["Location"])
        done = requests.get(f"{url}{callback.path}?{callback.query}", timeout=15)
        assert done.status_code == 200, done.text
        wait_for(lambda: operator.events["kite_account"], 10, "the kite_account notice")
        assert operator.events["kite_account"][0]["api_key"] == "sim_key"
    finally:
        operator.close()


@pytest.mark.integration
def test_a_redis_certificate_that_does_not_verify_is_named(service_env, workdir, database, managed_redis):
    """Redis's certificate checked against another CA: the web replica's /health and the shard
    worker's log say that the certificate did not verify, rather than failing without a word."""
    env = platform_env(service_env, managed_redis, database,
                       REDIS_SSL_CA_CERTS=str(managed_redis["other_ca"].ca.cert))
    web_port = free_port()
    honcho = Process("honcho-wrong-ca", [
        str(VENV_BIN / "python"), "scripts/procfile_run.py", str(web_port), "web", "worker",
    ], env, workdir)
    last = {}

    def refused() -> bool:
        try:
            response = requests.get(f"http://127.0.0.1:{web_port}/health", timeout=5)
        except requests.RequestException:
            return False
        last["health"] = response
        return response.status_code == 503 and "certificate verify failed" in response.text

    try:
        wait_for(refused, 30, "/health to name the certificate")
        reason = last["health"].json()["checks"]["redis"]["reason"]
        assert "CERTIFICATE_VERIFY_FAILED" in reason, reason

        def worker_says() -> bool:
            lines = honcho.output().splitlines()
            return any(" worker.1 " in line and "certificate verify failed" in line for line in lines)

        try:
            wait_for(worker_says, 30, "the shard worker to name the certificate")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{honcho.output()[-3000:]}") from None
    finally:
        honcho.stop(timeout=40)


def check_procfile_service(honcho: Process, url: str, make_token) -> dict:
    """/health turns 200, a client subscribes and gets ticks, /metrics parses; returns /health."""
    last = {}

    def healthy() -> bool:
        assert honcho.alive(), honcho.output()[-3000:]
        try:
            response = requests.get(f"{url}/health", timeout=5)
        except requests.RequestException:  # not listening yet, or busy building its registry mirror
            return False
        last["health"] = response.text
        return response.status_code == 200 and response.json()

    try:
        health = wait_for(healthy, 90, "the Procfile's processes to be healthy")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; /health: {last.get('health')}\n{honcho.output()[-4000:]}") from None
    client = RecordingClient().connect(url, make_token("honcho"))
    try:
        reply = client.call("subscribe", {"instruments": ["NSE:INFY"], "mode": "quote"})
        assert reply["rejected"] == [] and len(reply["tokens"]) == 1
        client.wait_for_ticks(reply["tokens"], count=3, timeout=15)
    finally:
        client.close()
    scrape = requests.get(f"{url}/metrics", timeout=5).text
    assert {f.name for f in text_string_to_metric_families(scrape)} >= {"ticker_shard_up", "ticker_clients_connected"}
    return health
