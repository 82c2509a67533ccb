"""The JavaScript client package (clients/js) through what renews or ends a connection, against
real replicas: JWT renewal before `exp` and on the server's `token_expired` warning, and the
server's `connection_max_age` cut, after which it reconnects with a fresh JWT and resubscribes
exactly what it still holds (a name whose token was unsubscribed stays gone); and ticks the
server conflated for a client that fell behind, reported as `seq` gaps."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.clients.test_js_client_package import built, symbol_of  # noqa: F401  (a fixture)
from tests.conftest import start
from tests.support.processes import free_port, wait_for
from tests.support.proxy import TcpProxy
from tests.web.webproc import Web, tokens_of, wait_until_healthy

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SESSION = ROOT / "tests" / "js" / "package_lifecycle.mjs"
GRACE_SECS = 10


@pytest.fixture(scope="module")
def replicas(stack, processes, service_env, workdir) -> dict[str, Web]:
    """Two replicas, started at once: `renew` checks JWTs without leeway (so a 3 s JWT expires
    on time) with a grace of GRACE_SECS; `max_age` closes every connection after 2 s."""
    settings = {
        "renew": {"JWT_LEEWAY_SECS": "0", "TOKEN_EXPIRY_GRACE_SECS": str(GRACE_SECS)},
        "max_age": {"MAX_CONNECTION_SECS": "2"},
    }
    webs = {}
    for name, env in settings.items():
        port = free_port()
        process = start(processes, f"web-{name}", [sys.executable, "wsgi.py"],
                        {**service_env, "PORT": str(port), **env}, workdir)
        webs[name] = Web(process, port)
    for web in webs.values():
        wait_until_healthy(web)
    return webs


def session(scenario: str, web: Web, service_env: dict, wanted: dict) -> dict:
    """Run the Node session; its JWTs are signed with the run's key, for its audience and issuer."""
    wanted = {**wanted, "aud": service_env["JWT_AUDIENCE"], "iss": service_env["JWT_ISSUER"]}
    argv = ["node", str(SESSION), scenario, web.url, service_env["JWT_PRIVATE_KEY_FILE"], json.dumps(wanted)]
    done = subprocess.run(argv,
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_the_jwt_is_renewed_before_exp_and_on_the_servers_warning(built, replicas, service_env, database):  # noqa: F811
    token = tokens_of(database, "NSE", 1, skip=330)[0]
    seen = session("renew", replicas["renew"], service_env, {"tokens": [token]})

    first, second, failed, third = seen["calls"][:4]
    # Before the first JWT's exp, on its own: renewed on the open connection.
    before = [r for r in seen["reauthed"] if r["at"] < first["exp"]]
    assert len(before) == 1 and before[0]["expires_at"] == second["exp"]
    assert not [e for e in seen["errors"] if e["code"] == "token_expired" and e["at"] < second["exp"]]
    assert any(t["at"] > first["exp"] + 0.5 for t in seen["ticks"])  # streaming past the first exp
    # The second renewal failed (no JWT to be had), so the second JWT expired on the connection:
    # the server's warning, with its grace, brought a renewal at once, and the connection stayed.
    assert failed["exp"] is None and failed["at"] < second["exp"]
    warning = next(e for e in seen["errors"] if e["code"] == "token_expired")
    assert warning["grace_secs"] == GRACE_SECS and warning["at"] >= second["exp"]
    renewal = next(r for r in seen["reauthed"] if r["at"] > warning["at"])
    assert renewal["expires_at"] == third["exp"] and renewal["at"] - warning["at"] < 1
    assert seen["disconnects"] == [] and seen["connects"] == 1
    assert [e["code"] for e in seen["errors"]] == ["get_token_failed", "token_expired"]
    assert max(t["at"] for t in seen["ticks"]) > renewal["at"] + 1


def test_connection_max_age_reconnects_with_a_fresh_jwt_and_resubscribes_what_is_held(
    built, replicas, service_env, database  # noqa: F811
):
    ltp_token, first, second = tokens_of(database, "NSE", 3, skip=340)
    names = [symbol_of(database, first), symbol_of(database, second)]
    seen = session("max_age", replicas["max_age"], service_env, {"ltp": [ltp_token], "names": names})

    assert seen["full"]["tokens"] == [first, second] and seen["unsubscribed"]["tokens"] == [first]
    assert seen["held"] == {str(ltp_token): "ltp", str(second): "full"}
    cut = seen["disconnects"][0]
    assert [e["code"] for e in seen["errors"] if e["at"] <= cut["at"]] == ["connection_max_age"]
    assert cut["reason"] == "transport close" and cut["reconnecting"]  # the server aborts the transport
    # A JWT asked for per connection, the reconnect's after the cut.
    assert len(seen["calls"]) == seen["connects"] >= 2 and seen["calls"][1]["at"] > cut["at"]
    # The resubscribe asked for what is held, each in its mode, the remaining name by name.
    resent = [s["payload"] for s in seen["sent"] if s["at"] > cut["at"]][:2]
    assert sorted(resent, key=lambda p: p["mode"]) == [
        {"tokens": [], "instruments": [names[1]], "mode": "full"},
        {"tokens": [ltp_token], "instruments": [], "mode": "ltp"},
    ]
    replies = {(t, r["mode"]) for r in seen["resubscribed"] for t in r["tokens"]}
    assert replies == {(ltp_token, "ltp"), (second, "full")}
    after = {(t["token"], t["mode"]) for t in seen["ticks"] if t["at"] > cut["at"]}
    assert after == {(ltp_token, "ltp"), (second, "full")}


def test_live_candles_come_again_after_a_reconnect(built, replicas, service_env, database):  # noqa: F811
    token, = tokens_of(database, "NSE", 1, skip=345)
    seen = session("candles", replicas["max_age"], service_env, {"tokens": [token]})

    assert seen["reply"]["candles"] == ["minute"] and seen["reply"]["tokens"] == [token]
    cut = seen["disconnects"][0]
    resent = [s["payload"] for s in seen["sent"] if s["at"] > cut["at"]][0]
    assert resent == {"tokens": [token], "instruments": [], "mode": "quote", "candles": ["minute"]}
    for connection in (1, 2):  # today's candles on each connection, the forming one among them
        got = [candle for at, candle in seen["candles"] if at == connection]
        assert got and all(c["instrument_token"] == token and c["interval"] == "minute" for c in got)
        assert any(not c["closed"] for c in got) and all(c["date"].endswith(":00+0530") for c in got)


class HoldingProxy(TcpProxy):
    """A TcpProxy that can hold the server's bytes: while held it reads nothing from the server,
    whose connection has a receive buffer of a few KiB, so the server's writes soon wait."""

    def __init__(self, target: tuple[str, int]):
        super().__init__(target)
        self.from_server: set[asyncio.StreamReader] = set()
        self.flowing: asyncio.Event | None = None

    def hold(self, held: bool) -> None:
        self._call(self._hold(held))

    async def _hold(self, held: bool) -> None:
        if self.flowing is None:
            self.flowing = asyncio.Event()
        (self.flowing.clear if held else self.flowing.set)()

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, self.target)
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        self.from_server.add(reader)
        return reader, writer

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link) -> None:
        if reader not in self.from_server:
            return await super()._pipe(reader, writer, link)
        while True:
            if self.flowing is not None:
                await self.flowing.wait()
            data = await reader.read(4096)
            if not data:
                writer.write_eof()
                return
            writer.write(data)
            await writer.drain()


def conflated(url: str) -> float:
    """The replica's ticker_ticks_conflated_total."""
    metrics = requests.get(f"{url}/metrics", timeout=5).text
    return sum(float(line.split()[-1]) for line in metrics.splitlines()
               if line.startswith("ticker_ticks_conflated_total"))


# Whether the server conflates within the wait depends on its kernel's send buffer filling behind
# the held proxy, which the shared stack's load varies: it failed 2 of 3 full runs (never alone).
# Out of `make test` until the replica can be made to conflate deterministically; run it with
# TICKER_NONDETERMINISTIC_TESTS=1. The gap logic itself is tested by the client's unit tests.
@pytest.mark.skipif(not os.environ.get("TICKER_NONDETERMINISTIC_TESTS"),
                    reason="timing-dependent: set TICKER_NONDETERMINISTIC_TESTS=1 to run it")
def test_ticks_conflated_for_a_client_that_fell_behind_are_reported_as_gaps(built, stack, service_env, database):  # noqa: F811
    tokens = tokens_of(database, "NFO-OPT", 300, skip=2000)
    proxy = HoldingProxy(("127.0.0.1", int(stack["url"].rsplit(":", 1)[1]))).start()
    before = conflated(stack["url"])
    wanted = {"tokens": tokens, "aud": service_env["JWT_AUDIENCE"], "iss": service_env["JWT_ISSUER"]}
    argv = ["node", str(SESSION), "gap", f"http://{proxy.url_host}", service_env["JWT_PRIVATE_KEY_FILE"],
            json.dumps(wanted)]
    node = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in node.stdout:
            lines.append(json.loads(line))
            if lines[-1].get("step") == "hold":
                proxy.hold(True)
                wait_for(lambda: conflated(stack["url"]) > before, 8, "the server to conflate the held client")
                proxy.hold(False)
        assert node.wait(20) == 0, node.stderr.read() + json.dumps(lines)[-3000:]
    finally:
        if node.poll() is None:
            node.kill()
        proxy.stop()
    seen = lines[-1]

    # What the server documents: a conflated client sees a jump in `seq` (docs/API.md "Delivery").
    assert seen["gaps"] and seen["disconnects"] == []
    for gap in seen["gaps"]:
        assert gap["missed"] == gap["seq"] - gap["after"] - 1 >= 1
        seqs = [seq for seq, snapshot in seen["seqs"][str(gap["token"])] if not snapshot]
        i = seqs.index(gap["seq"])
        assert seqs[i - 1] == gap["after"]  # the jump is between two ticks the client received
