"""The Celery app, built from the Flask app so tasks run with its config and app context."""

from __future__ import annotations

import logging

from celery import Celery, Task
from flask import Flask

from tasks import broker
from ticker import create_app

log = logging.getLogger(__name__)


broker.install()


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

from tasks import accounts, candles, registry, shards  # noqa: E402,F401  (registers tasks and their schedules)
