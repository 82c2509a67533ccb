"""The instrument registry reload against real PostgreSQL and Redis, fed by a real HTTP server
serving the simulator's dump with the day-to-day changes Kite makes (a token renumbered, an
instrument expired, a new listing), and by broken dumps."""

from __future__ import annotations

import csv
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg2
import pytest
import requests
from redis import ConnectionError as RedisConnectionError
from redis import Redis
from sqlalchemy import delete, func, select
from sqlalchemy import text as sql

from tests.conftest import REDIS_URL
from tests.support.clients import RecordingClient
from tests.support.processes import free_port, wait_for
from ticker.bus import keys
from ticker.bus.connection import redis_client
from ticker.db import session_for
from ticker.registry import instruments, mirror
from ticker.registry.dump import DumpError
from ticker.registry.instruments import MirrorUpdate, Registry, exchanges_of, replace_from_dump
from ticker.registry.loader import reload_instruments
from ticker.registry.mirror import copy_pairs, fingerprint
from ticker.registry.models import Instrument

pytestmark = pytest.mark.integration

NEW_LISTING = "NEWLISTCO"


class DumpServer:
    """Serves whatever `body` holds at GET/HEAD /instruments, like Kite's dump endpoint."""

    def __init__(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self):
                self._head()

            def do_GET(self):
                self._head()
                self.wfile.write(server.body)

            def _head(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/csv")
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()

            def log_message(self, *args):
                pass

        self.body = b""
        self.changed_registry = False  # set by tests that load a dump other than the simulator's
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def sim_dump(sim) -> str:
    return requests.get(f"{sim}/instruments", timeout=30).text


@pytest.fixture
def dump(app, sim, registry):
    """Point the app's Kite root at a DumpServer; put the simulator's registry back afterwards,
    since the other tests share the database."""
    server = DumpServer()
    original = app.config["KITE_API_ROOT"]
    app.config["KITE_API_ROOT"] = server.url
    yield server
    app.config["KITE_API_ROOT"] = original
    server.httpd.shutdown()
    if server.changed_registry:
        reload_instruments(app, min_ratio=0.0)


def rows_of(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def to_csv(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue().encode()


def find(rows, exchange: str, symbol: str) -> list[str]:
    return next(r for r in rows if r[11] == exchange and r[2] == symbol)


def next_day(sim_dump: str) -> tuple[bytes, dict]:
    """The dump with RELIANCE renumbered, one future expired and a new listing."""
    rows = rows_of(sim_dump)
    header, body = rows[0], rows[1:]
    tokens = {int(r[0]) for r in body}
    reliance = find(body, "NSE", "RELIANCE")
    expired = next(r for r in body if r[9] == "FUT")
    free = max(tokens) + 256
    old_token = int(reliance[0])
    reliance[0] = str(free)
    body.remove(expired)
    listing = [str(free + 256), "99999", NEW_LISTING, "NEW LISTING CO", "0", "", "0", "0.05", "1", "EQ", "NSE", "NSE"]
    body.append(listing)
    return to_csv([header, *body]), {"old": old_token, "new": free, "expired": int(expired[0]),
                                     "listed": free + 256, "count": len(body)}


def registry_count(app) -> int:
    with session_for(app.config["DATABASE_URL"]) as session:
        return session.scalar(select(func.count()).select_from(Instrument))


def lookup(app, redis) -> Registry:
    return Registry(redis, lambda: session_for(app.config["DATABASE_URL"]))


def test_reload_follows_renumbering_expiry_and_listing(app, redis, dump, sim_dump):
    dump.changed_registry = True
    dump.body = sim_dump.encode()
    first = reload_instruments(app)  # the simulator's dump: the registry as the last test left it
    changed, expect = next_day(sim_dump)
    dump.body = changed
    pubsub = redis.pubsub()
    pubsub.subscribe(keys.REGISTRY_RELOADED)
    pubsub.get_message(timeout=1)

    report = reload_instruments(app)

    assert report.renumbered == {expect["old"]: expect["new"]}
    assert report.removed == [expect["expired"]]
    assert report.added == [expect["listed"]]
    assert report.rows == expect["count"] == first.rows
    assert registry_count(app) == expect["count"]
    registry = lookup(app, redis)
    assert registry.resolve(["NSE:RELIANCE", f"NSE:{NEW_LISTING}"]) == [expect["new"], expect["listed"]]
    assert registry.known([expect["old"], expect["expired"], expect["new"]]) == [False, False, True]
    followed = [expect["old"], expect["expired"], expect["new"], expect["listed"]]
    assert registry.exchanges(followed) == [None, None, "NSE", "NSE"]  # what entitlements are checked against
    with session_for(app.config["DATABASE_URL"]) as session:  # and the same without the mirror
        assert exchanges_of(session, followed) == {expect["new"]: "NSE", expect["listed"]: "NSE"}
    message = wait_for(lambda: pubsub.get_message(timeout=0.5), 5, "the reload notice")
    pubsub.close()
    assert json.loads(message["data"]) == {"renumbered": {str(expect["old"]): expect["new"]},
                                           "removed": [expect["expired"]]}


@pytest.mark.parametrize(("broken", "why"), [
    (lambda text: b"", "empty"),
    (lambda text: text.encode()[: len(text) // 3], "truncated"),
    (lambda text: "\n".join(text.splitlines()[: len(text.splitlines()) // 4]).encode() + b"\n", "under 50%"),
    (lambda text: b"<html>Service Unavailable</html>\n", "header"),
    (lambda text: text.encode() + b"garbage\n" * 200, "corrupt"),
])
def test_an_unusable_dump_keeps_the_registry_and_says_why(app, redis, dump, sim_dump, broken, why):
    before = registry_count(app)
    dump.body = broken(sim_dump)
    with pytest.raises(DumpError, match=why):
        reload_instruments(app)
    assert registry_count(app) == before
    assert lookup(app, redis).size() == before


def test_bad_rows_are_skipped_with_their_line_numbers(app, dump, sim_dump):
    dump.changed_registry = True
    lines = sim_dump.splitlines(keepends=True)
    lines.insert(5, "not,a,row\n")
    dump.body = "".join(lines).encode()
    report = reload_instruments(app)
    assert [(bad.line, "columns" in bad.reason) for bad in report.bad_rows] == [(6, True)]
    assert report.rows == len(lines) - 2


def test_readers_never_see_a_partial_registry(app, redis, dump, sim_dump):
    dump.changed_registry = True
    dump.body = sim_dump.encode()
    reload_instruments(app)
    changed, expect = next_day(sim_dump)
    full = len(sim_dump.splitlines()) - 1
    seen, stop = set(), threading.Event()

    def read():
        while not stop.is_set():
            seen.add(registry_count(app))
            seen.add(redis.hlen(keys.REGISTRY_TOKENS))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for body in (changed, sim_dump.encode(), changed):
            dump.body = body
            reload_instruments(app)
    finally:
        stop.set()
        reader.join()
    assert seen <= {full, expect["count"]}, seen


def test_a_subscription_by_symbol_follows_the_renumbered_token(app, stack, make_token, dump, sim_dump):
    dump.changed_registry = True
    dump.body = sim_dump.encode()
    reload_instruments(app)
    client = RecordingClient().connect(stack["url"], make_token("reload"))
    try:
        reply = client.call("subscribe", {"instruments": ["NSE:RELIANCE"], "mode": "ltp"})
        [old] = reply["tokens"]
        changed, expect = next_day(sim_dump)
        assert expect["old"] == old
        dump.body = changed
        reload_instruments(app)
        wait_for(lambda: any(expect["new"] in e["tokens"] for e in client.events["subscribed"]), 10,
                 "the subscription to move to the new token")
        assert any(old in e["tokens"] for e in client.events["unsubscribed"])
    finally:
        client.close()


def table_pairs(app) -> dict[str, str]:
    with session_for(app.config["DATABASE_URL"]) as session:
        rows = session.execute(select(Instrument.instrument_token, Instrument.exchange, Instrument.tradingsymbol))
        return {str(token): f"{exchange}:{symbol}" for token, exchange, symbol in rows}


def table_fingerprint(app) -> str:
    with session_for(app.config["DATABASE_URL"]) as session:
        return fingerprint(copy_pairs(session.connection().connection.driver_connection.cursor()))


def assert_mirror_is_the_registry(app, redis) -> None:
    pairs = table_pairs(app)
    assert redis.hgetall(keys.REGISTRY_TOKENS) == pairs
    assert redis.hgetall(keys.REGISTRY_SYMBOLS) == {symbol: token for token, symbol in pairs.items()}
    assert redis.get(keys.REGISTRY_MIRRORED) == table_fingerprint(app)
    assert not redis.keys(f"{keys.REGISTRY_TOKENS}:staging*") + redis.keys(f"{keys.REGISTRY_SYMBOLS}:staging*")


def index_definitions(app) -> set[str]:
    """The table's indexes and constraints, as PostgreSQL defines them."""
    with session_for(app.config["DATABASE_URL"]) as session:
        indexes = session.scalars(sql("SELECT indexdef FROM pg_indexes WHERE tablename = 'instruments'"))
        constraints = session.scalars(sql("SELECT conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint "
                                          "WHERE conrelid = 'instruments'::regclass"))
        return {*indexes, *constraints}


def forbid_writing_the_whole_mirror(monkeypatch) -> None:
    monkeypatch.setattr(mirror, "StagedMirror", lambda *args: pytest.fail("the whole mirror was written"))


def test_the_mirror_follows_a_day_of_changes_by_those_changes_alone(app, redis, dump, sim_dump, monkeypatch):
    dump.changed_registry = True
    dump.body = sim_dump.encode()
    reload_instruments(app)
    assert_mirror_is_the_registry(app, redis)
    changed, expect = next_day(sim_dump)
    rows = rows_of(changed.decode())
    renamed, resized = find(rows, "NSE", "INFY"), find(rows, "NSE", "TCS")
    renamed[2], resized[8] = "INFOSYS", str(int(resized[8]) + 1)
    dump.body = to_csv(rows)
    forbid_writing_the_whole_mirror(monkeypatch)

    report = reload_instruments(app)

    assert report.resymbolled == {int(renamed[0]): "NSE:INFOSYS"}
    assert report.updated == 2  # the renamed row and the resized one
    assert report.renumbered == {expect["old"]: expect["new"]} and report.removed == [expect["expired"]]
    assert_mirror_is_the_registry(app, redis)
    assert lookup(app, redis).resolve(["NSE:INFY", "NSE:INFOSYS"]) == [None, int(renamed[0])]


def commit_without_mirroring(app, body: bytes) -> None:
    """A reload that died between its commit and the mirror."""
    with session_for(app.config["DATABASE_URL"]) as session:
        replace_from_dump(session, body.decode().splitlines(keepends=True), MirrorUpdate(redis_client(REDIS_URL)))


@pytest.mark.parametrize("mishap", ["missed a reload", "lost", "lost a field", "rebuilt by a replica"])
def test_a_mirror_that_is_not_the_registry_a_reload_starts_from_is_written_whole(app, redis, dump, sim_dump, mishap):
    dump.changed_registry = True
    dump.body = sim_dump.encode()
    reload_instruments(app)
    changed, _ = next_day(sim_dump)
    if mishap == "missed a reload":
        commit_without_mirroring(app, changed)
    elif mishap == "lost":
        redis.delete(keys.REGISTRY_TOKENS, keys.REGISTRY_SYMBOLS, keys.REGISTRY_MIRRORED)
    elif mishap == "lost a field":
        redis.hdel(keys.REGISTRY_TOKENS, next(iter(table_pairs(app))))
    else:
        redis.delete(keys.REGISTRY_TOKENS)
        assert lookup(app, redis).size() == registry_count(app)  # a replica rebuilds it from the database
        assert_mirror_is_the_registry(app, redis)
    dump.body = changed
    reload_instruments(app)
    assert_mirror_is_the_registry(app, redis)


def test_a_first_load_fills_the_empty_table_and_rebuilds_its_indexes(app, redis, dump, sim_dump):
    dump.changed_registry = True
    indexes = index_definitions(app)
    empty_the_registry(app)
    dump.body = sim_dump.encode()

    report = reload_instruments(app)

    assert report.rows == len(report.added) == registry_count(app) == len(sim_dump.splitlines()) - 1
    assert index_definitions(app) == indexes
    assert_mirror_is_the_registry(app, redis)


@pytest.mark.parametrize("holder", ["a reader holds the table", "a foreign key needs its key"])
def test_a_first_load_keeps_the_indexes_it_cannot_drop(app, redis, dump, sim_dump, monkeypatch, holder):
    dump.changed_registry = True
    indexes = index_definitions(app)
    empty_the_registry(app)
    monkeypatch.setattr(instruments, "INDEX_LOCK_TIMEOUT", "200ms")
    dump.body = sim_dump.encode()
    other = psycopg2.connect(app.config["DATABASE_URL"])
    try:
        if holder == "a reader holds the table":
            other.cursor().execute("SELECT count(*) FROM instruments")  # its transaction stays open
        else:
            with other, other.cursor() as cursor:
                cursor.execute("CREATE TABLE watched (token bigint REFERENCES instruments)")
        report = reload_instruments(app)
    finally:
        other.rollback()
        with other, other.cursor() as cursor:
            cursor.execute("DROP TABLE IF EXISTS watched")
        other.close()
    assert report.rows == registry_count(app) == len(sim_dump.splitlines()) - 1
    assert index_definitions(app) == indexes
    assert_mirror_is_the_registry(app, redis)


def empty_the_registry(app) -> None:
    with session_for(app.config["DATABASE_URL"]) as session:
        session.execute(delete(Instrument))
        session.commit()


def test_a_failed_reload_leaves_no_staged_mirror(redis):
    update = MirrorUpdate(redis)
    update.whole({1: "NSE:ONE", 2: "NSE:TWO"})
    update.staged.wait()
    assert redis.hgetall(update.staged.staging[0]) == {"1": "NSE:ONE", "2": "NSE:TWO"}
    assert 0 < redis.ttl(update.staged.staging[1]) <= mirror.STAGING_TTL_SECS
    update.abandon()
    assert not redis.exists(*update.staged.staging)


def test_the_registry_commits_while_redis_is_unreachable_and_the_mirror_catches_up(app, redis, dump, sim_dump):
    dump.changed_registry = True
    changed, expect = next_day(sim_dump)
    unreachable = MirrorUpdate(Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1))
    with session_for(app.config["DATABASE_URL"]) as session:
        report = replace_from_dump(session, changed.decode().splitlines(keepends=True), unreachable)
    assert registry_count(app) == expect["count"]
    with pytest.raises(RedisConnectionError):
        unreachable.finish(report.symbols, report.fingerprint)
    dump.body = changed
    reload_instruments(app)  # the next reload finds the mirror is not the registry it starts from
    assert_mirror_is_the_registry(app, redis)
