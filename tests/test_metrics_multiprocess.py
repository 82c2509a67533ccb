"""Under a forking server (PROMETHEUS_MULTIPROC_DIR), /metrics merges every worker process's figures."""

from __future__ import annotations

import os
import subprocess
import sys

from prometheus_client.parser import text_string_to_metric_families

from tests.support.processes import ROOT
from ticker.metrics import process_collector, render

WORKER = (
    "from ticker import metrics; "
    "metrics.FRAMES_SENT.inc(5); metrics.CLIENTS_CONNECTED.inc(2); "
    "metrics.DELIVERY_LATENCY_SECONDS.observe(0.004)"
)


def test_figures_of_every_worker_process_are_merged(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for _ in range(2):  # two worker processes, each with its own pid and files
        subprocess.run([sys.executable, "-c", WORKER], env=env, cwd=ROOT, check=True)

    found = {s.name: s.value for f in text_string_to_metric_families(render(process_collector(str(tmp_path))).decode())
             for s in f.samples if not s.labels or s.labels.get("le") == "0.005"}

    assert found["ticker_frames_sent_total"] == 10
    assert found["ticker_clients_connected"] == 4
    assert found["ticker_delivery_latency_seconds_bucket"] == 2
