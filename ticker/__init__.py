"""The ticker service: Kite ticker connections fanned out to authenticated Socket.IO clients.

A tick travels feed/ (Kite side: protocol, shard runtime) → bus/ (Redis: channels, snapshots,
demand, leases) → web/ (Socket.IO rooms, HTTP). registry/ holds instruments and accounts;
sim/ is the bundled Kite simulator.
"""

from __future__ import annotations

from flask import Flask

from ticker import db
from ticker.bus import keys
from ticker.config import Config
from ticker.extensions import jwt, socketio
from ticker.logs import configure_logging


def create_app(config_class: type[Config] = Config, async_mode: str = "threading") -> Flask:
    """Build the Flask app.

    `async_mode` is the Socket.IO server's concurrency model; only the web entry point
    (`wsgi.py`, which monkey-patches first) passes eventlet or gevent. Other processes (CLI,
    Celery) keep threading, since they serve no sockets.
    """
    app = Flask(__name__)
    app.config.from_object(config_class)
    configure_logging(
        app.config["LOG_LEVEL"],
        secrets=[app.config[key] for key in ("SECRET_KEY", "KITE_API_SECRET", "KITE_ACCESS_TOKEN", "JWT_PRIVATE_KEY")],
    )

    # Only processes that serve sockets bound their statements: the others run the registry
    # reload's long COPYs.
    serving = async_mode != "threading"
    db.configure(app.config["DATABASE_POOL_TIMEOUT_SECS"], app.config["DATABASE_CONNECT_TIMEOUT_SECS"],
                 app.config["DATABASE_STATEMENT_TIMEOUT_SECS"] if serving else None)

    from ticker.web import auth

    auth.init_keys(app)
    jwt.init_app(app)
    from ticker.bus.message_queue import LiveRedisManager
    from ticker.web.origins import OriginGate, OriginPolicy

    origins = OriginPolicy(app.config["CORS_ALLOWED_ORIGINS"], app.config["TRUSTED_PROXY_COUNT"])
    socketio.init_app(
        app,
        async_mode=async_mode,
        client_manager=LiveRedisManager(app.config["REDIS_URL"], channel=keys.SOCKETIO_CHANNEL),
        cors_allowed_origins=origins.allows,  # never [], which turns Engine.IO's origin check off
        ping_interval=app.config["PING_INTERVAL_SECS"],
        ping_timeout=app.config["PING_TIMEOUT_SECS"],
    )
    app.wsgi_app = OriginGate(app.wsgi_app, origins)  # refusals become connect_error `origin_not_allowed`
    from ticker.web import pings, wire

    if wire.install(socketio.server, async_mode):
        pings.install()

    from ticker.web import events, routes  # (importing events registers the handlers)

    events.name_literal_star_events(socketio.server)
    from ticker.web import after_connect

    after_connect.install(socketio.server)  # `connected` follows the CONNECT packet

    app.register_blueprint(routes.bp)
    from ticker.web import http_errors

    http_errors.register(app)

    from ticker.web import stats

    app.register_blueprint(stats.bp)

    from ticker.web import metrics as metrics_routes

    app.register_blueprint(metrics_routes.bp)

    from ticker.web import page

    app.register_blueprint(page.bp)

    from ticker.web import candles, instruments, kite_login, quotes

    app.register_blueprint(instruments.bp)
    app.register_blueprint(kite_login.bp)
    app.register_blueprint(candles.bp)
    app.register_blueprint(quotes.bp)

    from ticker import cli

    cli.register(app)
    return app
