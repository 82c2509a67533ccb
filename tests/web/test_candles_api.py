"""Historical candles over HTTP, driven by the official `kiteconnect.KiteConnect` client with
this service's JWT as its access token, against the whole stack (simulator feed, shards, the
candle builder, a web replica). The candles it returns agree with the ticks a Socket.IO client
of the same instrument received."""

from collections import defaultdict
from datetime import datetime, timedelta

import pytest
import requests
from kiteconnect import KiteConnect
from kiteconnect.exceptions import InputException, PermissionException, TokenException

from tests.support.clients import RecordingClient
from tests.support.processes import wait_for
from ticker.clock import IST

pytestmark = pytest.mark.integration

INFY, BSE_INFY = 408065, 128053508


def kite_for(stack, jwt: str) -> KiteConnect:
    kite = KiteConnect(api_key="any", root=stack["url"])
    kite.set_access_token(jwt)
    return kite


def window() -> tuple[datetime, datetime]:
    now = datetime.now(IST).replace(tzinfo=None, microsecond=0)  # kiteconnect sends naive IST times
    return now - timedelta(minutes=5), now + timedelta(minutes=1)


def traded_by_second(ticks: list[dict]) -> dict[str, list[tuple[float, int]]]:
    """The client's live ticks that carried a trade, `(price, quantity)` per exchange second."""
    out, previous = defaultdict(list), None
    for tick in ticks:
        if tick.get("snapshot"):
            continue
        if previous is not None and tick["volume_traded"] > previous:
            out[tick["exchange_timestamp"]].append((tick["last_price"], tick["volume_traded"] - previous))
        previous = tick["volume_traded"]
    return out


def test_historical_data_through_kiteconnect_matches_the_ticks(stack, make_token):
    jwt = make_token("candle-reader", exchanges=["NSE"])
    client = RecordingClient().connect(stack["url"], jwt)
    try:
        client.call("subscribe", {"tokens": [INFY], "mode": "full"})
        client.wait_for_ticks([INFY], count=16, timeout=20)
        kite = kite_for(stack, jwt)
        start, end = window()
        wait_for(lambda: len(kite.historical_data(INFY, start, end, "second", oi=True)) >= 3, 15,
                 "second candles")
        # The client's ticks first, then the candles once the builder has reached the client's
        # last second: every earlier second is then complete on both sides (a tick of a later
        # second reached both after all of its own). Read the other way round, the last candle
        # fetched may still be forming while the client goes on receiving its second's ticks.
        trades = traded_by_second(client.ticks_for(INFY))
        last = max(trades)
        wait_for(lambda: kite.historical_data(INFY, start, end, "second")[-1]["date"].isoformat() >= last, 10,
                 f"the builder's candle of {last}")
        rows = kite.historical_data(INFY, start, end, "second", oi=True)
    finally:
        client.close()
    assert all(set(row) == {"date", "open", "high", "low", "close", "volume", "oi"} for row in rows)
    assert all(row["date"].utcoffset() == timedelta(hours=5, minutes=30) for row in rows)
    assert [r["date"] for r in rows] == sorted(r["date"] for r in rows)
    seconds = sorted(trades)[1:]  # the client's first second may have begun before it subscribed
    checked = 0
    for row in rows:
        second = row["date"].isoformat()
        if second in seconds and second != seconds[-1]:
            prices = [p for p, _ in trades[second]]
            assert (row["open"], row["high"], row["low"], row["close"], row["volume"]) == (
                prices[0], max(prices), min(prices), prices[-1], sum(q for _, q in trades[second])), second
            checked += 1
    assert checked >= 2
    minutes = kite.historical_data(INFY, start, end, "minute")
    assert minutes and set(minutes[-1]) == {"date", "open", "high", "low", "close", "volume"}
    assert minutes[-1]["date"] == datetime.now(IST).replace(second=0, microsecond=0)  # the forming one


def test_candles_by_name_answer_kites_shape_with_oi(stack, make_token):
    start, end = window()
    wait_for(lambda: requests.get(f"{stack['url']}/candles", params={
        "instrument": "NSE:INFY", "interval": "minute", "from": str(start), "to": str(end)},
        headers={"Authorization": f"Bearer {make_token()}"}, timeout=5).json()["data"]["candles"], 20,
        "a minute candle of NSE:INFY")
    reply = requests.get(f"{stack['url']}/candles", params={
        "instrument": "NSE:INFY", "from": start.isoformat(), "to": end.isoformat()},
        headers={"Authorization": f"Bearer {make_token()}"}, timeout=5)
    body = reply.json()
    assert reply.status_code == 200 and body["status"] == "success"
    row = body["data"]["candles"][-1]
    assert len(row) == 7 and row[0].endswith("+0530") and row[0][16:] == ":00+0530"


def test_bad_requests_get_kites_errors(stack, make_token):
    kite = kite_for(stack, make_token("nse-only", exchanges=["NSE"]))
    start, end = window()
    with pytest.raises(InputException, match="invalid interval"):
        kite.historical_data(INFY, start, end, "hour")
    with pytest.raises(InputException, match="after"):
        kite.historical_data(INFY, end, start, "minute")
    with pytest.raises(InputException, match="continuous"):
        kite.historical_data(INFY, start, end, "minute", continuous=True)
    with pytest.raises(InputException, match="too long"):
        kite.historical_data(INFY, start - timedelta(days=3), end, "second")
    with pytest.raises(PermissionException, match="BSE"):
        kite.historical_data(BSE_INFY, start, end, "minute")
    with pytest.raises(InputException, match="no instrument"):
        kite.historical_data(4_000_000_000, start, end, "minute")
    with pytest.raises(TokenException):
        kite_for(stack, "not-a-jwt").historical_data(INFY, start, end, "minute")
    reply = requests.get(f"{stack['url']}/candles", params={"instrument": "NSE:NOSUCH", "from": str(start),
                                                            "to": str(end)},
                         headers={"Authorization": f"Bearer {make_token()}"}, timeout=5)
    assert reply.status_code == 400 and reply.json()["code"] == "unknown_instrument"


def test_health_and_metrics_show_the_builder(stack):
    health = requests.get(f"{stack['url']}/health", timeout=5).json()["checks"]["candles"]
    assert health["ok"] and health["builder"]["up"] and health["builder"]["ticks"] > 0, health
    assert "reasons" not in health
    scrape = requests.get(f"{stack['url']}/metrics", params={"scope": "cluster"}, timeout=10).text
    assert "ticker_candles_builder_up 1.0" in scrape and "ticker_candles_ticks_total" in scrape


def test_a_starting_worker_creates_the_coming_days_partitions(stack):
    def done():
        job = requests.get(f"{stack['url']}/health", timeout=5).json()["checks"]["jobs"]["jobs"]["candle_partitions"]
        return job if job["outcome"] == "ok" else None

    assert "partitions" in wait_for(done, 30, "the partition job of the worker's start")["detail"]
