"""The JavaScript client package (clients/js, @ticker/client): its sources type-check, its pure
logic passes its unit tests, and its build streams from a real replica through a connection cut."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.proxy import TcpProxy
from tests.web.webproc import tokens_of

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "clients" / "js"
SESSION = ROOT / "tests" / "js" / "package_client.mjs"
TSC = PACKAGE / "node_modules" / ".bin" / "tsc"


@pytest.fixture(scope="module")
def built() -> Path:
    """The package built from its current sources (`make install` builds it; a stale build is
    rebuilt here so the test never runs old code)."""
    if shutil.which("node") is None or not TSC.exists():
        pytest.fail("Node and the package's dependencies are needed: run `make install`")
    sources = [*PACKAGE.glob("src/*.ts"), PACKAGE / "tsconfig.json"]
    index = PACKAGE / "dist" / "index.js"
    if not index.exists() or index.stat().st_mtime < max(p.stat().st_mtime for p in sources):
        run([str(TSC), "-p", str(PACKAGE)])
    return PACKAGE / "dist"


def run(argv: list[str], timeout: float = 60) -> str:
    done = subprocess.run(argv, cwd=PACKAGE, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_sources_type_check():
    if not TSC.exists():
        pytest.fail("the package's dependencies are needed: run `make install`")
    run([str(TSC), "-p", str(PACKAGE), "--noEmit"])


def test_unit_tests_of_the_gap_logic_pass(built):
    out = run(["node", "--test", "test/"])
    assert "# fail 0" in out and "# pass 0" not in out


def symbol_of(database: str, token: int) -> str:
    from sqlalchemy import text

    from ticker.db import engine_for

    with engine_for(database).connect() as connection:
        query = text("SELECT exchange || ':' || tradingsymbol FROM instruments WHERE instrument_token = :t")
        return connection.execute(query, {"t": token}).scalar_one()


def test_client_streams_typed_ticks_and_resubscribes_after_a_cut(built, stack, make_token, database):
    ltp_token, named_token = tokens_of(database, "NSE", 2, skip=320)
    name = symbol_of(database, named_token)
    refused = tokens_of(database, "NFO-FUT", 1, skip=5)[0]
    proxy = TcpProxy(("127.0.0.1", int(stack["url"].rsplit(":", 1)[1]))).start()
    wanted = {"ltp": [ltp_token], "full": [name], "refused": [refused]}
    jwt = make_token("js-package", exchanges=["NSE"])
    session = subprocess.Popen(
        ["node", str(SESSION), f"http://{proxy.url_host}", jwt, json.dumps(wanted)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        lines = []
        for line in session.stdout:
            lines.append(json.loads(line))
            if lines[-1].get("step") == "cut":
                assert proxy.reset() >= 1
        assert session.wait(30) == 0, session.stderr.read() + json.dumps(lines)
    finally:
        if session.poll() is None:
            session.kill()
        proxy.stop()
    seen = lines[-1]

    assert seen["replies"]["ltp"] == {"tokens": [ltp_token], "mode": "ltp", "total": 1, "rejected": [
        {"token": refused, "code": "not_entitled", "message": seen["replies"]["ltp"]["rejected"][0]["message"]}]}
    assert seen["replies"]["full"]["tokens"] == [named_token] and seen["replies"]["full"]["mode"] == "full"
    assert [(e["code"], e["token"]) for e in seen["refusedEvents"]] == [("not_entitled", refused)]
    assert seen["badMode"]["isTickerError"] and seen["badMode"]["code"] == "bad_request"
    assert seen["held"] == {str(ltp_token): "ltp", str(named_token): "full"}
    # The cut: socket.io-client reconnects, with a fresh JWT, and the client resubscribes each in its mode.
    assert seen["disconnect"]["reconnecting"] and seen["tokenCalls"] >= 2
    resent = {(t, r["mode"]) for r in seen["resubscribed"] for t in r["tokens"]}
    assert resent == {(ltp_token, "ltp"), (named_token, "full")}
    for token in (ltp_token, named_token):
        assert seen["before"][str(token)] >= 2 and seen["after"][str(token)] >= 2
    assert seen["modes"] == {str(ltp_token): ["ltp"], str(named_token): ["full"]}


def test_the_readme_example_streams(built, stack, make_token):
    example = (PACKAGE / "examples" / "quickstart.mjs").read_text()
    assert example.strip() in (PACKAGE / "README.md").read_text(), "README shows the example as it is"
    env = {"PATH": shutil.which("node").rsplit("/", 1)[0], "TICKER_URL": stack["url"], "JWT": make_token("readme"),
           "STOP_AFTER_TICKS": "4"}
    done = subprocess.run(["node", "examples/quickstart.mjs"], cwd=PACKAGE, env=env, capture_output=True, text=True,
                          timeout=20)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "connected as readme" in done.stdout and "rejected []" in done.stdout
    assert " full " in done.stdout and " ltp " in done.stdout
