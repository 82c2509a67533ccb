"""GET /metrics against the running service: the scrape parses and says what the cluster does."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
import requests
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from tests.support.clients import RecordingClient
from ticker import jobs
from ticker.metrics import ClusterCollector, render

pytestmark = pytest.mark.integration


def scrape(url: str, **params: str) -> dict[str, dict[tuple, float]]:
    """Samples by name, each a map of its sorted label pairs to the value."""
    response = requests.get(f"{url}/metrics", params=params, timeout=5)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    return samples(response.text)


def samples(text: str) -> dict[str, dict[tuple, float]]:
    found: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def only(series: dict[tuple, float], **labels: str) -> float:
    wanted = tuple(sorted(labels.items()))
    return next(value for key, value in series.items() if set(wanted) <= set(key))


def test_scrape_parses_and_reports_a_streaming_shard(stack, make_token, app):
    client = RecordingClient().connect(stack["url"], make_token("metrics"))
    try:
        reply = client.call("subscribe", {"instruments": ["NSE:INFY"], "mode": "quote"})
        client.wait_for_ticks(reply["tokens"], count=2, timeout=10)
        time.sleep(1.2)  # one more shard report
        found = scrape(stack["url"])
    finally:
        client.close()

    slot = f"{app.config['KITE_API_KEY']}:0"
    assert only(found["ticker_cluster_redis_up"]) == 1
    assert only(found["ticker_shard_up"], slot=slot) == 1
    assert only(found["ticker_shard_state"], slot=slot, state="streaming") == 1
    assert only(found["ticker_shard_ticks_published_total"], slot=slot) > 0
    assert only(found["ticker_shard_frames_received_total"], slot=slot) > 0
    assert only(found["ticker_shard_tokens_subscribed"], slot=slot) >= 1
    assert time.time() - only(found["ticker_shard_last_report_timestamp_seconds"], slot=slot) < 5
    assert ":" in only_label(found["ticker_shard_lease_owner_info"], "owner")
    assert 0 < only(found["ticker_account_capacity_used_ratio"], account=app.config["KITE_API_KEY"]) < 1
    assert only(found["ticker_registry_instruments"]) > 1000
    assert only(found["ticker_cluster_database_up"]) == 1
    assert only(found["ticker_account_token_valid"], account=app.config["KITE_API_KEY"]) == 1
    # This replica's own figures (and the process collector's) are in the same scrape.
    assert "ticker_clients_connected" in found and "process_cpu_seconds_total" in found
    assert "ticker_delivery_latency_seconds_bucket" in found


def only_label(series: dict[tuple, float], name: str) -> str:
    return next(dict(key)[name] for key in series)


def test_scopes_split_replica_and_cluster_figures(stack):
    replica, cluster = scrape(stack["url"], scope="replica"), scrape(stack["url"], scope="cluster")

    assert "ticker_clients_connected" in replica and "ticker_shard_up" not in replica
    assert "ticker_shard_up" in cluster and "ticker_clients_connected" not in cluster
    bad = requests.get(f"{stack['url']}/metrics", params={"scope": "everything"}, timeout=5)
    assert bad.status_code == 400 and bad.json()["code"] == "bad_request"


def test_no_label_is_per_instrument_or_per_user(stack):
    allowed = {"slot", "state", "owner", "account", "job", "outcome", "reason", "le", "quantile", "mode", "loop",
               "kind", "version", "implementation", "major", "minor", "patchlevel", "generation", "replica", "event",
               "exchange",  # a Kite exchange code or "other" (ticker.web.entitlements.metric_label)
               "endpoint"}  # quote, ohlc or ltp (ticker.web.quotes)
    for name, series in scrape(stack["url"]).items():
        for labels in series:
            assert {key for key, _ in labels} <= allowed, (name, labels)


def test_cluster_collector_reads_beat_jobs_and_account_tokens(redis):
    """What beat jobs record (ticker.jobs.job_statuses) and the accounts table say come out as
    bounded series."""
    job, now = "metrics-test-job", time.time()
    statuses = {job: {"outcome": jobs.FAILED, "detail": "Kite answered 503", "last_run": now - 1.5,
                      "last_ok": None, "duration_secs": 1.5},
                "registry_reload": {"outcome": jobs.OK, "detail": "98,186 instruments", "last_run": now - 60,
                                    "last_ok": now - 60, "duration_secs": 2.0}}
    accounts = [{"api_key": "k1", "enabled": True, "token_valid": True,
                 "token_expires_at": datetime.fromtimestamp(now + 3600, UTC)},
                {"api_key": "k2", "enabled": True, "token_valid": False, "token_expires_at": None}]
    found = samples(render(ClusterCollector(redis, 9000, accounts=lambda: accounts, jobs=lambda: statuses)).decode())

    assert only(found["ticker_job_last_outcome"], job=job, outcome="failed") == 1
    assert only(found["ticker_job_last_run_timestamp_seconds"], job=job) == pytest.approx(now - 1.5)
    assert only(found["ticker_job_last_duration_seconds"], job=job) == pytest.approx(1.5, abs=0.1)
    assert "ticker_job_last_success_timestamp_seconds" not in found or not any(
        dict(key).get("job") == job for key in found["ticker_job_last_success_timestamp_seconds"])
    assert only(found["ticker_registry_last_reload_timestamp_seconds"]) == pytest.approx(now - 60)
    assert only(found["ticker_account_token_valid"], account="k1") == 1
    assert only(found["ticker_account_token_valid"], account="k2") == 0
    assert 3590 < only(found["ticker_account_token_expiry_seconds"], account="k1") <= 3600


def test_redis_or_database_down_is_a_figure_not_a_failed_scrape():
    import redis as redis_lib

    def database_down() -> list:
        raise ConnectionError("database is down")

    unreachable = redis_lib.Redis(port=1, socket_connect_timeout=0.2)
    found = samples(render(ClusterCollector(unreachable, 9000, accounts=database_down)).decode())

    assert only(found["ticker_cluster_redis_up"]) == 0
    assert only(found["ticker_cluster_database_up"]) == 0
