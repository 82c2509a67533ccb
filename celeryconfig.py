"""Celery configuration: explicit, JSON only, named queues.

Shard tasks run for as long as their worker lives, so they get a queue (and a worker) of their
own, where each task gets a fresh child process (`--max-tasks-per-child 1` in the Procfile).
Everything else (supervision, token checks, registry reloads) runs on `default`.
"""

from kombu import Queue

from ticker.bus.connection import celery_broker, connection_options, tls_options
from ticker.config import Config

# REDIS_URL as kombu reads it: the same URL for one server; for a Sentinel deployment kombu's
# `sentinel://...;sentinel://...` and the master's name among the transport options below.
broker_url, _broker_target = celery_broker(Config.REDIS_URL)
# A `rediss://` broker verifies the server's certificate as every other client of the service
# does (kombu alone would fall back to not verifying it at all); False for plain `redis://`.
broker_use_ssl = tls_options(Config.REDIS_URL) or False
result_backend = None
task_ignore_result = True

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
timezone = "Asia/Kolkata"  # Kite's schedule is IST: token expiry 06:00, instrument dump 08:00
enable_utc = True

task_default_queue = "default"
task_queues = (Queue("default"), Queue("shards"))
task_routes = {"tasks.shards.run_shard": {"queue": "shards"}}

worker_prefetch_multiplier = 1  # a long-running shard task must not hold other tasks back
worker_hijack_root_logger = False
broker_connection_retry_on_startup = True
# A broker connection that a NAT or firewall forgot (no FIN, no RST) must not stall a worker or
# beat for good: a publish gives up after socket_timeout and reconnects; kombu drops a consumer's
# BRPOP connection whose reply is overdue by brpop_timeout + health_check_interval (about 11 s
# with these); the kernel's keepalive probes and user timeout bound what TCP itself waits. (A
# worker could still wait forever on its remote-control connection after a Redis restart:
# tasks/broker.py.)
_liveness = connection_options()
broker_transport_options = {
    "visibility_timeout": 3600,
    "socket_timeout": 10,  # longer than BRPOP's 1 s server-side timeout
    "socket_connect_timeout": _liveness["socket_connect_timeout"],
    "socket_keepalive": True,
    "socket_keepalive_options": _liveness["socket_keepalive_options"],
    "health_check_interval": 5,
    "retry_on_timeout": True,
    **_broker_target,
}
