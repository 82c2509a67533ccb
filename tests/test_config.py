"""Settings a platform hands out, as the service reads them (from a fresh copy of the
configuration module each time, since the service reads them once, at import)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from tests.support.processes import ROOT
from ticker.db import sqlalchemy_url

READ = ("PORT", "WEB_HOST", "REDIS_URL", "TICKER_CHANNEL_NAMESPACE", "REDIS_SSL_CERT_REQS")


@pytest.fixture
def config(monkeypatch):
    """`config(**env)`: the Config class ticker/config.py builds from exactly `env`."""

    def read(**env: str) -> type:
        for name in READ:
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        spec = importlib.util.spec_from_file_location("fresh_config", ROOT / "ticker" / "config.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
        spec.loader.exec_module(module)
        return module.Config

    return read


@pytest.mark.parametrize("env, host", [
    ({}, "127.0.0.1"),  # a local run: this host only
    ({"PORT": "31337"}, "0.0.0.0"),  # a platform's router connects from elsewhere
    ({"PORT": "31337", "WEB_HOST": "127.0.0.1"}, "127.0.0.1"),  # said explicitly: kept
    ({"WEB_HOST": "::"}, "::"),
])
def test_the_web_replica_listens_on_every_interface_when_a_platform_gives_the_port(config, env, host):
    assert config(**env).WEB_HOST == host


def test_a_platforms_redis_url_keeps_its_password_out_of_channel_names(config):
    heroku = config(REDIS_URL="rediss://:s3cret@ec2-1-2-3-4.compute-1.amazonaws.com:17980")
    assert heroku.CHANNEL_NAMESPACE == "db0"
    assert config(REDIS_URL="redis://127.0.0.1:6379/9?ssl_cert_reqs=none").CHANNEL_NAMESPACE == "db9"


def test_an_unknown_certificate_requirement_fails_at_start(config):
    with pytest.raises(ValueError, match="REDIS_SSL_CERT_REQS='cert_none': expected one of required, optional, none"):
        config(REDIS_SSL_CERT_REQS="CERT_NONE")
    assert config(REDIS_SSL_CERT_REQS="None").REDIS_SSL_CERT_REQS == "none"
    assert config().REDIS_SSL_CERT_REQS == "required"


def test_herokus_postgres_url_spelling_is_accepted():
    assert sqlalchemy_url("postgres://u:p@db.example:5432/d") == "postgresql+psycopg2://u:p@db.example:5432/d"
    assert sqlalchemy_url("postgresql://u@h/d") == "postgresql+psycopg2://u@h/d"


@pytest.mark.parametrize("env, message", [
    ({"PORT": "abc"}, "PORT='abc': expected an integer"),
    ({"QUOTE_WAIT_SECS": "-5"}, "QUOTE_WAIT_SECS='-5': expected a number of at least 0"),
    ({"REDIS_SSL_CA_CERTS": "/nonexistent/ca.pem"}, "REDIS_SSL_CA_CERTS='/nonexistent/ca.pem': no such readable file"),
])
def test_a_setting_that_cannot_work_stops_the_process_at_start_naming_it(env, message):
    result = subprocess.run([sys.executable, "-c", "import ticker.config"], env={**os.environ, **env},
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_an_empty_number_setting_is_its_default():
    result = subprocess.run([sys.executable, "-c", "from ticker.config import Config; print(Config.WEB_CONCURRENCY,"
                             " Config.WEB_PORT)"], env={**os.environ, "WEB_CONCURRENCY": "", "PORT": ""},
                            capture_output=True, text=True, cwd=ROOT)
    assert result.stdout.split() == ["0", "5000"], result.stderr
