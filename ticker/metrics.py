"""Prometheus metrics of a web replica, defined in one place.

Units are in the names, and no label is ever per instrument or per user (bounded
cardinality). Shard figures live in Redis (each shard reports its state there every second)
and are exported by a collector, since shard tasks run in short-lived Celery children.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from ticker import jobs
from ticker.bus import keys
from ticker.bus.lease import shard_live, shard_states
from ticker.feed.sharding import slot_api_key

log = logging.getLogger(__name__)

# Ingest (shard parsed the tick) to emit (this replica handed it to Socket.IO).
DELIVERY_LATENCY_SECONDS = Histogram(
    "ticker_delivery_latency_seconds",
    "Time from a tick's ingest by its shard to its emit by this replica",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)


def observe_all(histogram: Histogram, values: list[float]) -> None:
    """`histogram.observe(v)` for each of `values`, taking each bucket's lock once per call
    rather than once per value: on the delivery path that is once per flush instead of once per
    frame (about 3 us a frame). Falls back to `observe` should the client library's internals
    (bucket bounds, per-bucket values) ever change."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for value in values:
            histogram.observe(value)
        return
    counts = [0] * len(bounds)
    for value in values:
        counts[bisect.bisect_left(bounds, value)] += 1  # the first bound >= value, as observe()
    for bucket, count in zip(buckets, counts, strict=True):
        if count:
            bucket.inc(count)
    total.inc(sum(values))


TICKS_DELIVERED = Counter("ticker_ticks_delivered_total", "Tick deliveries (one tick reaching one client)")
FRAMES_SENT = Counter("ticker_frames_sent_total", "Socket.IO `ticks` frames sent to clients")
TICKS_CONFLATED = Counter(
    "ticker_ticks_conflated_total", "Ticks replaced by a newer tick before a slow client read them"
)
TICKS_DROPPED = Counter("ticker_ticks_dropped_total", "Ticks not delivered (client disconnected for being too slow)")
CONNECTIONS_REJECTED = Counter(
    "ticker_connections_rejected_total", "Socket.IO connections refused, by reason code", ["reason"]
)
CLIENTS_DISCONNECTED = Counter(
    "ticker_clients_disconnected_total", "Socket.IO connections this replica cut, by reason code", ["reason"]
)
JWKS_FETCHES = Counter("ticker_jwks_fetches_total",
                       "Fetches of the JWKS key set, by outcome (ok, unreachable, http_error, invalid) and trigger "
                       "(schedule, unknown_kid)", ["outcome", "trigger"])
HTTP_ERRORS = Counter(
    "ticker_http_errors_total", "HTTP requests answered with an error (ticker.web.http_errors), by code", ["reason"]
)
# livesum: under a forking server (PROMETHEUS_MULTIPROC_DIR), the live worker processes' sum.
CLIENTS_CONNECTED = Gauge(
    "ticker_clients_connected", "Socket.IO clients connected to this replica", multiprocess_mode="livesum"
)
SUBSCRIPTIONS = Gauge(
    "ticker_subscriptions", "Token subscriptions held by this replica's clients", multiprocess_mode="livesum"
)
LOOP_FAILURES = Counter("ticker_replica_loop_failures_total", "Turns of a replica's background loop that failed",
                        ["loop"])
LOOP_LAST_SUCCESS = Gauge("ticker_replica_loop_last_success_timestamp_seconds",
                          "When each background loop of this replica last completed a turn", ["loop"],
                          multiprocess_mode="max")
BUS_LISTENER_UP = Gauge("ticker_bus_listener_up",
                        "1 while this replica's tick listener is subscribed and hearing from Redis",
                        multiprocess_mode="min")
BUS_LISTENER_RECONNECTS = Counter(
    "ticker_bus_listener_reconnects_total",
    "Times the tick listener gave up its Redis connection: silent (no answer to pings), error, bug",
    ["reason"])
MESSAGE_QUEUE_RECONNECTS = Counter(
    "ticker_message_queue_reconnects_total",
    "Times the Socket.IO message queue listener gave up its Redis connection: silent or error", ["reason"])
UPSTREAM_NOTICES = Counter("ticker_upstream_unavailable_notices_total",
                           "upstream_unavailable notices sent to clients, by reason", ["reason"])
REQUESTS_WAITING = Gauge("ticker_requests_waiting",
                         "Client requests (connects, messages, disconnects) waiting for a turn to be worked on",
                         multiprocess_mode="livesum")
SNAPSHOTS_UNCONFIRMED = Counter(
    "ticker_snapshots_unconfirmed_total",
    "Snapshots sent before the token's live channel was confirmed (a tick may fall between them)")
REQUESTS_SHED = Counter("ticker_requests_shed_total",
                        "Client requests answered `server_busy` because the replica's resources stayed busy",
                        ["kind"])
# `exchange` is a Kite exchange code or "other" (ticker.web.entitlements.metric_label); `event`
# is subscribe (a token refused), reauth or reload (a held token dropped).
ENTITLEMENT_REFUSALS = Counter(
    "ticker_entitlement_refusals_total",
    "Instruments a connection's entitlements kept from it (refused or dropped), by exchange and event",
    ["exchange", "event"])


# Market quotes (ticker.web.quotes): instruments by endpoint (quote, ohlc, ltp) and outcome
# (answered, or the code it was omitted with: pending, capacity_exhausted, not_entitled, unknown_*).
QUOTE_INSTRUMENTS = Counter("ticker_quote_instruments_total",
                            "Instruments named in market-quote requests, by endpoint and outcome",
                            ["endpoint", "outcome"])
QUOTE_HOLDS = Gauge("ticker_quote_holds", "Instruments this replica subscribed on demand for market quotes, held now",
                    multiprocess_mode="livesum")


# --- Cluster-wide figures, read from Redis at scrape time -------------------------------------
# Shards, beat jobs and account token checks run in Celery processes that come and go, so they
# report to Redis and any replica exports the cluster's view. Every label here is bounded: a
# slot ("<api key>:<n>", at most a few per key), an account (api key), a job name, a state.

SHARD_STATES = ("streaming", "reconnecting", "waiting")  # what a shard reports (ticker.feed.shard)
REGISTRY_RELOAD_JOB = "registry_reload"  # the beat job that reloads the instruments (tasks/registry.py)

# Shard state hash field -> (metric name, kind, help). A field a shard does not report is skipped.
_SHARD_FIELDS = {
    "ticks_ingested": ("ticker_shard_ticks_ingested", "counter", "Ticks parsed from the Kite feed by this shard"),
    "ticks": ("ticker_shard_ticks_published", "counter", "Ticks published to Redis by this shard"),
    "ticks_unpublished": ("ticker_shard_ticks_unpublished", "counter",
                          "Ticks lost because the tick bus node of their bucket could not be reached (cluster)"),
    "frames": ("ticker_shard_frames_received", "counter", "Binary frames received from the Kite feed"),
    "reconnects": ("ticker_shard_reconnects", "counter", "Times the shard's feed dropped and was reopened"),
    "gap_secs": ("ticker_shard_feed_gap_seconds", "counter", "Seconds the shard's feed was down"),
    "tokens": ("ticker_shard_tokens_subscribed", "gauge", "Instruments the shard streams upstream"),
    "generation": ("ticker_shard_lease_generation", "gauge", "Fencing generation of the shard's lease"),
    "heartbeat": ("ticker_shard_last_report_timestamp_seconds", "gauge", "When the shard last reported (epoch)"),
    "watchdog_closes": ("ticker_shard_lease_watchdog_closes", "counter",
                        "Upstream connections the lease watchdog shut down (the lease not renewed in time)"),
    "last_error_at": ("ticker_shard_last_error_timestamp_seconds", "gauge", "When the shard last met an error (epoch)"),
    "recorded_frames": ("ticker_shard_recorded_frames", "counter",
                        "Frames from Kite the shard's recorder wrote to disk (RECORD_DIR; heartbeats included)"),
    "recorded_bytes": ("ticker_shard_recorded_bytes", "counter", "Payload bytes of the frames the recorder wrote"),
    "recorder_errors": ("ticker_shard_recorder_errors", "counter",
                        "Faults of the shard's recorder (disk full, permission denied); each turns it off a while"),
}
# Shard state hash fields `<prefix><label value>` -> (metric name, kind, help, label).
_SHARD_FIELD_FAMILIES = {
    "malformed_": ("ticker_shard_malformed_frames", "counter",
                   "Frames from Kite that were malformed and dropped or skipped, by kind (ticker.feed.frames)", "kind"),
}


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


_CANDLE_COUNTERS = {
    "ticks": "Ticks the candle builder folded",
    "late_ticks": "Ticks dropped as late, per series (ticker.candles.build)",
    "volume_resets": "volume_traded counters seen going down, per series",
    "candles_closed": "Candles completed",
    "rows_written": "Completed candles written to PostgreSQL",
    "rows_dropped": "Completed candles dropped after PostgreSQL failed too long",
    "write_failures": "Failed writes of completed candles to PostgreSQL (retried)",
}


class ClusterCollector(Collector):
    """Exports what the cluster reports to Redis: shards, accounts, registry, beat jobs.

    Redis being down is itself a figure (`ticker_cluster_redis_up 0`), never a failed scrape.
    """

    def __init__(self, client: redis.Redis, tokens_per_account: int,
                 accounts: Callable[[], list[dict[str, Any]]] | None = None,
                 jobs: Callable[[], dict[str, dict[str, Any]]] | None = None):
        """`accounts` lists the Kite accounts (ticker.registry.accounts.account_summaries),
        `jobs` gives each beat job's last run (ticker.jobs.job_statuses)."""
        self.redis = client
        self.accounts = accounts
        self.jobs = jobs
        self.tokens_per_account = tokens_per_account

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("ticker_cluster_redis_up", "1 when this replica could read the cluster state")
        try:
            families = [*self._shards(), *self._registry(), *self._jobs(), *self._candles()]
        except redis.RedisError as exc:
            log.warning("metrics: cannot read the cluster state from Redis: %s", exc)
            families = []
        up.add_metric([], 0 if not families else 1)
        yield up
        yield from families
        yield from self._account_tokens()

    def _shards(self) -> Iterator[Metric]:
        shards = shard_states(self.redis)
        now = time.time()
        figures = {field: _family(*spec, ["slot"]) for field, spec in _SHARD_FIELDS.items()}
        families = {prefix: _family(*spec[:3], ["slot", spec[3]]) for prefix, spec in _SHARD_FIELD_FAMILIES.items()}
        state = GaugeMetricFamily("ticker_shard_state", "1 for the state each shard reports", labels=["slot", "state"])
        live = GaugeMetricFamily("ticker_shard_up", "1 when the shard streams and reported recently", labels=["slot"])
        recorder = GaugeMetricFamily("ticker_shard_recorder_up",
                                     "1 when the shard's recorder writes, 0 while a fault keeps it off "
                                     "(no sample: recording is off)", labels=["slot"])
        owner = InfoMetricFamily("ticker_shard_lease_owner", "Which worker process holds each shard's lease",
                                 labels=["slot"])
        streamed: dict[str, float] = {}
        for slot, fields in sorted(shards.items()):
            for field, family in figures.items():
                value = _number(fields.get(field))
                if value is not None:
                    family.add_metric([slot], value)
            _add_labelled(families, slot, fields)
            for name in SHARD_STATES:
                state.add_metric([slot, name], 1 if fields.get("state") == name else 0)
            live.add_metric([slot], 1 if shard_live(fields, now) else 0)
            if fields.get("recorder"):
                recorder.add_metric([slot], 1 if fields["recorder"] == "recording" else 0)
            owner.add_metric([slot], {"owner": fields.get("owner", "")})
            account = slot_api_key(slot)
            streamed[account] = streamed.get(account, 0) + (_number(fields.get("tokens")) or 0)
        yield from (*figures.values(), *families.values(), state, live, recorder, owner)
        yield from self._capacity(streamed)

    def _capacity(self, streamed: dict[str, float]) -> Iterator[Metric]:
        used = GaugeMetricFamily("ticker_account_tokens_subscribed", "Instruments streamed upstream per Kite account",
                                 labels=["account"])
        ratio = GaugeMetricFamily("ticker_account_capacity_used_ratio",
                                  "Instruments streamed over Kite's limit per key (connections x tokens)",
                                  labels=["account"])
        for account, tokens in sorted(streamed.items()):
            used.add_metric([account], tokens)
            ratio.add_metric([account], tokens / self.tokens_per_account)
        yield used
        yield ratio

    def _candles(self) -> Iterator[Metric]:
        """The candle builder's report (ticker.candles.builder); nothing when none ever ran."""
        from ticker.candles.builder import COUNTERS, builder_report

        report = builder_report(self.redis, time.time())
        if report is None:
            return
        up = GaugeMetricFamily("ticker_candles_builder_up", "1 when the candle builder reported in the last 5 s")
        up.add_metric([], 1 if report["up"] else 0)
        pending = GaugeMetricFamily("ticker_candles_rows_pending",
                                    "Completed candles waiting for PostgreSQL in the builder")
        pending.add_metric([], report["rows_pending"])
        yield up
        yield pending
        for name in COUNTERS:
            counter = CounterMetricFamily(f"ticker_candles_{name}", _CANDLE_COUNTERS[name])
            counter.add_metric([], report[name])
            yield counter

    def _registry(self) -> Iterator[Metric]:
        size = GaugeMetricFamily("ticker_registry_instruments", "Instruments in the registry (Redis mirror)")
        size.add_metric([], self.redis.hlen(keys.REGISTRY_TOKENS))
        yield size
        version = _number(self.redis.get(keys.REGISTRY_VERSION))
        if version is not None:
            family = GaugeMetricFamily("ticker_registry_version", "Reload generation of the registry")
            family.add_metric([], version)
            yield family
        epoch = _number(self.redis.hget(keys.EPOCH, "id"))
        if epoch is not None:  # changes() of it counts the times Redis lost the state seqs continue from
            family = GaugeMetricFamily("ticker_bus_epoch_start_timestamp_seconds",
                                       "When the bus epoch that ticks' seq counts in began (ticker.bus.epoch)")
            family.add_metric([], epoch / 1000)
            yield family

    def _jobs(self) -> Iterator[Metric]:
        """From the status each beat job records in PostgreSQL (ticker.jobs.record); none when
        the database cannot be read (`ticker_cluster_database_up` says so)."""
        try:
            statuses = self.jobs() if self.jobs else {}
        except Exception as exc:  # noqa: BLE001  (a database outage is a figure, not a failed scrape)
            log.warning("metrics: cannot read the beat jobs' status: %s", exc)
            return
        last_run = GaugeMetricFamily("ticker_job_last_run_timestamp_seconds", "When each beat job last ran",
                                     labels=["job"])
        last_ok = GaugeMetricFamily("ticker_job_last_success_timestamp_seconds",
                                    "When each beat job last succeeded", labels=["job"])
        duration = GaugeMetricFamily("ticker_job_last_duration_seconds", "How long each beat job's last run took",
                                     labels=["job"])
        outcome = GaugeMetricFamily("ticker_job_last_outcome", "1 for the outcome of each beat job's last run",
                                    labels=["job", "outcome"])
        reload = GaugeMetricFamily("ticker_registry_last_reload_timestamp_seconds",
                                   "When the instrument registry was last reloaded successfully")
        for name, status in sorted(statuses.items()):
            for family, field in ((last_run, "last_run"), (last_ok, "last_ok"), (duration, "duration_secs")):
                if _number(status.get(field)) is not None:
                    family.add_metric([name], _number(status[field]))
            if status.get("outcome"):
                known = status["outcome"] in (jobs.OK, jobs.FAILED, jobs.BUSY)
                outcome.add_metric([name, status["outcome"] if known else "other"], 1)
            if name == REGISTRY_RELOAD_JOB and _number(status.get("last_ok")) is not None:
                reload.add_metric([], _number(status["last_ok"]))
        yield from (last_run, last_ok, duration, outcome, reload)

    def _account_tokens(self) -> Iterator[Metric]:
        """From the accounts table: whether each account's token works and when it expires."""
        up = GaugeMetricFamily("ticker_cluster_database_up", "1 when this replica could read the Kite accounts")
        valid = GaugeMetricFamily("ticker_account_token_valid", "1 when the account's Kite access token works",
                                  labels=["account"])
        expires = GaugeMetricFamily("ticker_account_token_expiry_seconds",
                                    "Seconds until the account's Kite access token expires (negative: expired)",
                                    labels=["account"])
        try:
            accounts = self.accounts() if self.accounts else []
        except Exception as exc:  # noqa: BLE001  (a database outage is a figure, not a failed scrape)
            log.warning("metrics: cannot read the Kite accounts: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        now = time.time()
        for account in accounts:
            if not account.get("enabled", True):
                continue
            valid.add_metric([account["api_key"]], 1 if account.get("token_valid") else 0)
            if account.get("token_expires_at") is not None:
                expires.add_metric([account["api_key"]], account["token_expires_at"].timestamp() - now)
        yield from (up, valid, expires)


def _add_labelled(families: dict[str, Metric], slot: str, fields: dict[str, str]) -> None:
    """One sample per `<prefix><label value>` field (the label's values are a fixed set)."""
    for field, raw in fields.items():
        for prefix, family in families.items():
            value = _number(raw)
            if field.startswith(prefix) and value is not None:
                family.add_metric([slot, field.removeprefix(prefix)], value)


def _family(name: str, kind: str, documentation: str, labels: list[str]) -> Metric:
    kinds = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily}
    return kinds[kind](name, documentation, labels=labels)


class Scrape:
    """What one /metrics response exports: any number of collectors, as one registry."""

    def __init__(self, *collectors: Collector):
        self.collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


def process_collector(multiprocess_dir: str = "") -> Collector:
    """This process's metrics; with a PROMETHEUS_MULTIPROC_DIR (a forking server), every
    worker process's, merged from the files they write there."""
    if not multiprocess_dir:
        return REGISTRY
    return multiprocess.MultiProcessCollector(None, path=multiprocess_dir)


def render(*collectors: Collector) -> bytes:
    """The Prometheus text exposition of `collectors`."""
    return generate_latest(Scrape(*collectors))
