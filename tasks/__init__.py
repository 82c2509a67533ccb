"""The Celery app, built from the Flask app so tasks run with its config and app context."""

from __future__ import annotations

import logging

from celery import Celery, Task
from flask import Flask

from tasks import broker
from ticker import create_app
from ticker.bus.connection import celery_broker

log = logging.getLogger(__name__)


broker.install()


def celery_init_app(app: Flask) -> Celery:
    class FlaskTask(Task):
        def __call__(self, *args, **kwargs):
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object("celeryconfig")
    # The app's REDIS_URL, in kombu's form (ticker.bus.connection.celery_broker).
    broker_url, target = celery_broker(app.config["REDIS_URL"])
    celery_app.conf.broker_url = broker_url
    celery_app.conf.broker_transport_options = {**celery_app.conf.broker_transport_options, **target}
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app


flask_app = create_app()
celery = celery_init_app(flask_app)

from tasks import accounts, registry, shards  # noqa: E402,F401  (registers tasks and their schedules)
