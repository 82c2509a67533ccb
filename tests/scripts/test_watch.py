"""scripts/watch.py: a refusal or an unreachable server is one clear line and a non-zero exit."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.processes import ROOT, free_port

pytestmark = pytest.mark.integration


def watch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/watch.py", "--seconds", "5", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


def test_a_refused_token_is_one_line_and_a_failure(stack):
    run = watch("--url", stack["url"], "--token", "not-a-jwt")

    assert run.returncode == 1
    assert "Traceback" not in run.stderr + run.stdout
    assert run.stderr.strip().startswith("refused: token_invalid: ") and len(run.stderr.strip().splitlines()) == 1


def test_a_server_that_is_down_is_one_line_and_a_failure():
    url = f"http://127.0.0.1:{free_port()}"
    run = watch("--url", url, "--token", "any")

    assert run.returncode == 1
    assert "Traceback" not in run.stderr + run.stdout
    assert run.stderr.strip() == f"cannot connect to {url}: is the service running?"
