"""The examples in docs/API.md, run as written against a live server: only the server's
address and the JWT are filled in, as a reader would."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from tests.support.processes import ROOT

pytestmark = pytest.mark.integration

API_DOC = ROOT / "docs" / "API.md"
DOC_URL = "http://127.0.0.1:5000"
RUN_SECS = 6  # the examples stream until stopped; this long is enough for a subscribe and ticks


def example(language: str) -> str:
    """The first ```language block under "## Examples"."""
    examples = API_DOC.read_text().split("\n## Examples", 1)[1]
    return re.search(rf"```{language}\n(.*?)```", examples, re.S).group(1)


def run_for(argv: list[str], seconds: float) -> str:
    """Run an example that never ends by itself; stop it (by its PID) and return what it printed."""
    process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(seconds)
    finally:
        process.kill()
    return process.communicate(timeout=10)[0]


def test_the_javascript_example_subscribes_and_prints_ticks(stack, make_token):
    if shutil.which("node") is None or not (ROOT / "node_modules" / "socket.io-client").exists():
        pytest.fail("Node and socket.io-client are needed: run `make install` (npm ci)")
    code = example("js").replace(DOC_URL, stack["url"])
    # In node_modules, where `import "socket.io-client"` resolves; one file per test run.
    script = ROOT / "node_modules" / f".api-example-{os.getpid()}.mjs"
    script.write_text(f"const JWT = {make_token('js-example')!r};\n{code}")
    try:
        printed = run_for(["node", str(script)], RUN_SECS)
    finally:
        script.unlink()

    assert re.search(r"^subscribed \[ \d+(, \d+)* \] rejected \[", printed, re.M), printed
    assert len(re.findall(r"^\d+ \d+(\.\d+)? \d+$", printed, re.M)) >= 2, printed  # token price seq


def test_the_python_example_subscribes_and_prints_ticks(stack, make_token):
    code = example("python").replace(DOC_URL, stack["url"])
    printed = run_for([sys.executable, "-c", f"JWT = {make_token('py-example')!r}\n{code}"], RUN_SECS)

    # The example prints the reply from the main thread while ticks print from the client's
    # thread, so the reply need not start a line of its own.
    assert re.search(r"\{'tokens': \[\d+\], 'mode': 'ltp', 'total': 1, 'rejected': \[\]\}", printed), printed
    assert len(re.findall(r"^\d+ \d+(\.\d+)? \d+$", printed, re.M)) >= 2, printed
