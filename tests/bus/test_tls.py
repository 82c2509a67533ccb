"""A managed Redis over TLS (`rediss://`): every Redis client of the service (the client factory,
the tick listener's own connections, the Socket.IO message queue, the Celery broker) verifies
the server's certificate as configured, and says so when it does not verify."""

from __future__ import annotations

import importlib.util
from types import ModuleType

import kombu
import kombu.exceptions
import pytest
import redis

from tests.support.processes import ROOT, free_port
from tests.support.tls import CertificateAuthority, start_tls_redis
from ticker.bus.connection import redis_client, tls_options
from ticker.bus.message_queue import LiveRedisManager
from ticker.config import Config
from ticker.web.listener import TickListener


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A TLS-only Redis that asks for a client certificate; its CA, a client's, another CA."""
    directory = tmp_path_factory.mktemp("tls")
    ca = CertificateAuthority(directory, "redis-ca")
    port = free_port()
    process = start_tls_redis(port, directory, ca)
    yield {"url": f"rediss://127.0.0.1:{port}/0", "ca": ca, "client": ca.issue("client", client=True),
           "other": CertificateAuthority(directory, "other-ca")}
    process.stop()


@pytest.fixture
def configure(monkeypatch, server):
    """Set Config.REDIS_SSL_* as the environment would (cached clients forgotten before and after)."""

    def configure(cert_reqs: str = "required", ca: CertificateAuthority | None = None) -> None:
        redis_client.cache_clear()
        monkeypatch.setattr(Config, "REDIS_SSL_CERT_REQS", cert_reqs)
        monkeypatch.setattr(Config, "REDIS_SSL_CA_CERTS", str(ca.ca.cert) if ca else "")
        monkeypatch.setattr(Config, "REDIS_SSL_CERTFILE", str(server["client"].cert))
        monkeypatch.setattr(Config, "REDIS_SSL_KEYFILE", str(server["client"].key))

    yield configure
    redis_client.cache_clear()


def test_plain_redis_urls_get_no_tls_options():
    assert tls_options("redis://127.0.0.1:6379/0") == {}


def test_every_client_verifies_the_server_against_the_configured_ca(server, configure):
    configure(ca=server["ca"])
    url = server["url"]
    assert redis_client(url).ping() and redis_client(url, "probe").ping()
    listener = TickListener(redis_client(url), "wake", set, lambda batch: None, lambda: False, lambda *_: None)
    assert listener.raw.ping()  # its own connections (bytes, not decoded) inherit the factory's TLS
    queue = LiveRedisManager(url, channel="tls-test", write_only=True)  # the Socket.IO message queue
    queue._redis_connect()
    assert queue.redis.ping()
    with kombu.Connection(url, ssl=tls_options(url)) as broker:  # celeryconfig's broker_use_ssl
        messages = broker.SimpleQueue("tls-test")
        messages.put({"n": 1})
        assert messages.get(timeout=5).payload == {"n": 1}
        messages.close()


def test_a_server_certificate_of_another_ca_is_refused_and_named(server, configure):
    configure(ca=server["other"])
    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        redis_client(server["url"], "probe").ping()
    with kombu.Connection(server["url"], ssl=tls_options(server["url"])) as broker:
        with pytest.raises(kombu.exceptions.OperationalError, match="CERTIFICATE_VERIFY_FAILED"):
            broker.ensure_connection(max_retries=1, interval_start=0)


def test_heroku_redis_is_reached_without_checking_its_certificate(server, configure):
    configure(cert_reqs="none")  # Heroku Redis presents a self-signed certificate
    assert redis_client(server["url"]).ping()


def test_the_urls_own_query_parameters_win(server, configure):
    configure(ca=server["other"])
    assert redis_client(server["url"] + "?ssl_cert_reqs=none").ping()


def celeryconfig(monkeypatch, url: str, **settings: str) -> ModuleType:
    """celeryconfig.py as a Celery process reads it, given REDIS_URL and Config.REDIS_SSL_*."""
    monkeypatch.setattr(Config, "REDIS_URL", url)
    for name, value in settings.items():
        monkeypatch.setattr(Config, name, value)
    spec = importlib.util.spec_from_file_location("fresh_celeryconfig", ROOT / "celeryconfig.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_celery_broker_takes_the_same_tls_options(monkeypatch):
    assert celeryconfig(monkeypatch, "redis://127.0.0.1:6379/0").broker_use_ssl is False
    heroku = celeryconfig(monkeypatch, "rediss://h:6380", REDIS_SSL_CERT_REQS="none", REDIS_SSL_CA_CERTS="")
    assert heroku.broker_use_ssl == {"ssl_cert_reqs": "none"}
    bundle = celeryconfig(monkeypatch, "rediss://h:6380", REDIS_SSL_CERT_REQS="required", REDIS_SSL_CA_CERTS="/ca.pem")
    assert bundle.broker_use_ssl == {"ssl_cert_reqs": "required", "ssl_ca_certs": "/ca.pem"}
