"""GET /metrics: Prometheus exposition of this replica and of the cluster it belongs to.

`?scope=replica` gives this process's figures only, `?scope=cluster` the cluster's (shards,
accounts, registry, beat jobs, read from Redis and PostgreSQL) only; the default gives both. With several
replicas, scrape each one with `scope=replica` and one of them (or the proxy) with
`scope=cluster`, so cluster series are not counted once per replica.

Serve it on the internal network only (deploy/nginx.conf refuses it from outside).
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST

from ticker import metrics
from ticker.bus.connection import redis_client
from ticker.db import session_for
from ticker.jobs import job_statuses
from ticker.registry.accounts import account_summaries
from ticker.web import errors

bp = Blueprint("metrics", __name__)

SCOPES = ("all", "replica", "cluster")


def _cluster() -> metrics.ClusterCollector:
    config = current_app.config

    def accounts() -> list[dict]:
        with session_for(config["DATABASE_URL"]) as session:
            return account_summaries(session)

    def jobs() -> dict[str, dict]:
        with session_for(config["DATABASE_URL"]) as session:
            return job_statuses(session)

    return metrics.ClusterCollector(
        redis_client(config["REDIS_URL"]),
        tokens_per_account=config["KITE_CONNECTIONS_PER_KEY"] * config["KITE_TOKENS_PER_CONNECTION"],
        accounts=accounts,
        jobs=jobs,
    )


@bp.get("/metrics")
def scrape():
    """The Prometheus text exposition format."""
    scope = request.args.get("scope", "all")
    if scope not in SCOPES:
        return jsonify({"code": errors.BAD_REQUEST, "message": f"scope must be one of {', '.join(SCOPES)}"}), 400
    collectors = []
    if scope in ("all", "replica"):
        collectors.append(metrics.process_collector(current_app.config["PROMETHEUS_MULTIPROC_DIR"]))
    if scope in ("all", "cluster"):
        collectors.append(_cluster())
    return Response(metrics.render(*collectors), content_type=CONTENT_TYPE_LATEST)
