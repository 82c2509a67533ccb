"""The Celery app, built from the Flask app so tasks run with its config and app context."""

from __future__ import annotations

import functools
import logging

from celery import Celery, Task
from flask import Flask
from kombu.transport import redis as kombu_redis

from ticker import create_app

log = logging.getLogger(__name__)


def survive_a_lost_broker(restore_unacked):
    """kombu's Redis transport, closing a connection whose broker went away, puts the messages
    this worker had prefetched back in their queue through a client it can no longer build
    (`AttributeError: 'NoneType' object has no attribute 'hostname'`, celery/kombu#970 and
    #582). Celery calls that unrecoverable and the worker exits, so a Redis restart would stop
    every shard. The messages are still in Redis's unacked set if Redis kept its data (kombu
    restores them after the visibility timeout) and gone with it if not; either way beat's shard
    supervisor dispatches any slot without an owner again within seconds."""

    @functools.wraps(restore_unacked)
    def restore(self, client=None):
        try:
            return restore_unacked(self, client)
        except AttributeError as exc:
            log.warning("broker connection lost: could not put prefetched messages back (%s); "
                        "the shard supervisor re-dispatches what they carried", exc)
            self._delivered.clear()
            return None

    return restore


kombu_redis.QoS.restore_unacked = survive_a_lost_broker(kombu_redis.QoS.restore_unacked)


def celery_init_app(app: Flask) -> Celery:
    class FlaskTask(Task):
        def __call__(self, *args, **kwargs):
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object("celeryconfig")
    celery_app.conf.broker_url = app.config["REDIS_URL"]
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app


flask_app = create_app()
celery = celery_init_app(flask_app)

from tasks import accounts, registry, shards  # noqa: E402,F401  (registers tasks and their schedules)
