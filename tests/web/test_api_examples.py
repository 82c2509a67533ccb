"""The examples in docs/API.md, run as written against a live server: only the server's
address and the JWT are filled in, as a reader would."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.processes import ROOT

pytestmark = pytest.mark.integration

API_DOC = ROOT / "docs" / "API.md"
DOC_URL = "http://127.0.0.1:5000"
RUN_SECS = 20  # the examples stream until stopped: each is stopped once it printed what the test needs
TICK_LINE = re.compile(r"^\d+ \d+(\.\d+)? \d+$", re.M)  # token price seq
JS_REPLY = re.compile(r"^subscribed \[ \d+(, \d+)* \] rejected \[", re.M)
# The Python example prints the reply from the main thread while ticks print from the client's
# thread, so the reply need not start a line of its own.
PY_REPLY = re.compile(r"\{'tokens': \[\d+\], 'mode': 'ltp', 'total': 1, 'rejected': \[\]\}")


def example(language: str) -> str:
    """The first ```language block under "## Examples"."""
    examples = API_DOC.read_text().split("\n## Examples", 1)[1]
    return re.search(rf"```{language}\n(.*?)```", examples, re.S).group(1)


def run_until(argv: list[str], done: Callable[[str], bool], log: Path, env: dict | None = None) -> str:
    """Run an example that never ends by itself until what it printed satisfies `done` (or for
    RUN_SECS); stop it (by its PID) and return what it printed."""
    with open(log, "w") as out:
        process = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + RUN_SECS
            while time.monotonic() < deadline and process.poll() is None and not done(log.read_text()):
                time.sleep(0.1)
        finally:
            process.kill()
            process.wait(10)
    return log.read_text()


def subscribed_and_ticking(reply: re.Pattern) -> Callable[[str], bool]:
    return lambda printed: bool(reply.search(printed)) and len(TICK_LINE.findall(printed)) >= 2


def test_the_javascript_example_subscribes_and_prints_ticks(stack, make_token, tmp_path):
    if shutil.which("node") is None or not (ROOT / "node_modules" / "socket.io-client").exists():
        pytest.fail("Node and socket.io-client are needed: run `make install` (npm ci)")
    code = example("js").replace(DOC_URL, stack["url"])
    # In node_modules, where `import "socket.io-client"` resolves; one file per test run.
    script = ROOT / "node_modules" / f".api-example-{os.getpid()}.mjs"
    script.write_text(f"const JWT = {make_token('js-example')!r};\n{code}")
    try:
        printed = run_until(["node", str(script)], subscribed_and_ticking(JS_REPLY), tmp_path / "js-example.out")
    finally:
        script.unlink()

    assert JS_REPLY.search(printed), printed
    assert len(TICK_LINE.findall(printed)) >= 2, printed


def test_the_python_example_subscribes_and_prints_ticks(stack, make_token, tmp_path):
    code = example("python").replace(DOC_URL, stack["url"])
    argv = [sys.executable, "-c", f"JWT = {make_token('py-example')!r}\n{code}"]
    # Each line as it is printed, as in a terminal (not a block at exit, which the kill would lose).
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    printed = run_until(argv, subscribed_and_ticking(PY_REPLY), tmp_path / "python-example.out", env)

    assert PY_REPLY.search(printed), printed
    assert len(TICK_LINE.findall(printed)) >= 2, printed
