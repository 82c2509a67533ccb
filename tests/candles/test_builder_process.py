"""The candle builder as the Procfile runs it (`flask candles run`), against a Redis of its own
and the test PostgreSQL: ticks published on the bus as shards publish them become live candle
updates, forming candles in Redis, completed candles in PostgreSQL; a builder killed mid-candle
is replaced and the next one continues the same candle; partitions are kept by retention."""

import signal
import time
from datetime import datetime, timedelta

import orjson
import pytest

from tests.support.processes import VENV_BIN, Process, wait_for
from ticker.bus import keys
from ticker.bus.ticks import encode_all, pack
from ticker.candles import store
from ticker.candles.build import bucket_start
from ticker.candles.builder import CandleService, builder_report
from ticker.clock import IST
from ticker.config import Config
from ticker.db import engine_for

TOKEN = 99_901_001  # no simulator instrument: the session's own builder never touches it
SECS = {"second": 1, "60minute": 3600}


@pytest.fixture
def builder_env(service_env, private_redis, database):
    port = private_redis.connection_pool.connection_kwargs["port"]
    # A long grace: the test's ticks all carry one second, and stay on time however slow it runs.
    return {**service_env, "REDIS_URL": f"redis://127.0.0.1:{port}/0", "DATABASE_URL": database,
            "TICKER_CHANNEL_NAMESPACE": Config.CHANNEL_NAMESPACE, "CANDLE_CLOSE_GRACE_SECS": "120"}


def start_builder(processes, env, workdir, name):
    process = Process(name, [str(VENV_BIN / "flask"), "--app", "ticker", "candles", "run"], env, workdir)
    processes.append(process)  # stopped by PID at the end of the run, whatever happens here
    return process


def publish(client, second: int, price: float, volume: int) -> None:
    tick = {"tradable": True, "mode": "full", "instrument_token": TOKEN, "last_price": price,
            "volume_traded": volume, "oi": 0, "exchange_timestamp": datetime.fromtimestamp(second, IST).isoformat(),
            "seq": volume, "epoch": 1, "ingest_ts": int(time.time() * 1000)}
    client.publish(keys.channel_for(TOKEN), pack([tick], encode_all([tick])))


def minute_candle(client) -> list | None:
    raw = client.hget(keys.CANDLE_STATE, TOKEN)
    series = orjson.loads(raw).get("minute") if raw else None
    return series[3] if series else None


def minute_volume(client) -> int | None:
    candle = minute_candle(client)
    return candle[5] if candle else None


def listening(client) -> bool:
    return dict(client.pubsub_numsub(keys.channel_for(TOKEN)))[keys.channel_for(TOKEN)] == 1


def test_ticks_become_live_stored_candles_and_a_killed_builder_is_continued(processes, builder_env, workdir,
                                                                           private_redis, database):
    client = private_redis
    first = start_builder(processes, builder_env, workdir, "candles-1")
    wait_for(lambda: listening(client), 20, "the builder to listen to the tick channels")
    live = client.pubsub(ignore_subscribe_messages=True)
    live.subscribe(keys.CANDLE_CHANNELS[keys.bucket_of(TOKEN)])
    second = int(time.time())
    publish(client, second, 100.0, 1000)  # a mid-session first tick: the baseline only
    publish(client, second, 101.0, 1010)
    publish(client, second, 99.0, 1030)
    wait_for(lambda: minute_volume(client) == 30, 10, "the forming minute candle")
    assert minute_candle(client)[1:6] == [101.0, 101.0, 99.0, 99.0, 30]
    updates = []
    wait_for(lambda: updates.extend(orjson.loads(m["data"]) for m in iter(live.get_message, None)) or any(
        u[0] == TOKEN and u[1] == "minute" and u[2][5] == 30 and u[3] is False for batch in updates for u in batch),
        5, "a live update of the forming candle")

    first.kill(signal.SIGKILL)
    successor = start_builder(processes, builder_env, workdir, "candles-2")
    wait_for(lambda: (client.hget(keys.CANDLE_BUILDER, "owner") or "").endswith(f"-{successor.pid}"), 20,
             "the next builder to take over")  # it reports only once it listens
    publish(client, second, 102.0, 1050)
    wait_for(lambda: minute_volume(client) == 50, 10, "the minute candle to continue")
    assert minute_candle(client)[1:6] == [101.0, 102.0, 99.0, 102.0, 50]

    publish(client, second + 60, 103.0, 1060)  # a tick of the next minute closes this one
    engine = engine_for(database)
    start = datetime.fromtimestamp(bucket_start(second, 60), IST)
    wait_for(lambda: store.read(engine, TOKEN, "minute", start, start), 10, "the minute candle in PostgreSQL")
    assert store.read(engine, TOKEN, "minute", start, start)[0][1:6] == [101.0, 102.0, 99.0, 102.0, 50]
    closed_seconds = [r for r in store.today(client, TOKEN, "second", time.time()) if r[7]]
    assert [r[:6] for r in closed_seconds] == [[second, 101.0, 102.0, 99.0, 102.0, 50]]  # in Redis only
    assert store.read(engine, TOKEN, "second", start, start + timedelta(minutes=2)) == []
    successor.terminate()


def test_partitions_are_created_ahead_and_dropped_after_retention(database):
    engine = engine_for(database)
    today = datetime.now(IST).date()
    expired = today - timedelta(days=40)
    store.ensure_partitions(engine, [expired])
    assert expired in store.partitions(engine)
    store.maintain_partitions(engine, today, retention_days=30)
    days = store.partitions(engine)
    assert expired not in days and all(today + timedelta(days=n) in days for n in range(4))


def test_candles_wait_in_memory_while_postgresql_fails_and_are_written_after(private_redis, database):
    dead = engine_for("postgresql://postgres@127.0.0.1:9/nowhere")  # nothing listens on port 9
    service = CandleService(private_redis, dead, 3.0, ["minute"])
    second = int(time.time())
    for offset, volume in ((0, 10), (1, 15), (60, 20)):  # a baseline, a trade, the next minute
        stamp = datetime.fromtimestamp(bucket_start(second, 60) + offset, IST).isoformat()
        tick = {"instrument_token": TOKEN + 1, "last_price": 50.0 + offset, "volume_traded": volume,
                "exchange_timestamp": stamp, "mode": "full", "seq": 1, "epoch": 1, "ingest_ts": 0}
        service.fold(pack([tick], encode_all([tick])), bucket_start(second, 60) + offset + 0.5)
        service.flush(bucket_start(second, 60) + offset + 0.5)
    service._write_pending()
    service._report(time.time())
    report = builder_report(private_redis, time.time())
    assert (report["rows_pending"], report["write_failures"], report["rows_written"]) == (1, 1, 0)
    assert "OperationalError" in report["last_error"]
    service.engine = engine_for(database)  # PostgreSQL is back
    service._write_pending()
    service._report(time.time())
    report = builder_report(private_redis, time.time())
    assert (report["rows_pending"], report["rows_written"], report["last_error"]) == (0, 1, "")
    start = datetime.fromtimestamp(bucket_start(second, 60), IST)
    assert store.read(engine_for(database), TOKEN + 1, "minute", start, start)[0][1:6] == [51.0, 51.0, 51.0, 51.0, 5]
