"""Entry point of a web replica: `python wsgi.py` (or a WSGI server pointed at `app`).

Monkey-patching must happen before anything imports sockets, so it comes first.
"""

import gc
import os
import resource

ASYNC_MODE = os.environ.get("ASYNC_MODE", "gevent")  # ticker.config.Config.ASYNC_MODE: read before any import
if ASYNC_MODE == "eventlet":
    import eventlet

    eventlet.monkey_patch()
elif ASYNC_MODE == "gevent":
    import gevent
    from gevent import monkey

    # Each client holds several greenlets; recording the stack each was spawned from (a
    # debugging aid) cost kilobytes per client.
    gevent.config.track_greenlet_tree = False
    monkey.patch_all()

from ticker.db import wait_cooperatively  # noqa: E402

wait_cooperatively(ASYNC_MODE)  # psycopg2 waits for PostgreSQL as a greenlet, freezing no other one

from ticker import create_app  # noqa: E402
from ticker.extensions import socketio  # noqa: E402
from ticker.web.replica import replica  # noqa: E402
from ticker.web.transport import without_compression  # noqa: E402

app = create_app(async_mode=ASYNC_MODE)
if not app.config["WS_COMPRESSION"]:
    app.wsgi_app = without_compression(app.wsgi_app)


def open_files_up_to_the_hard_limit() -> None:
    """Every WebSocket connection is a file descriptor; the usual soft limit of 1024 would cap
    a replica far below its capacity."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard != resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


if __name__ == "__main__":
    open_files_up_to_the_hard_limit()
    with app.app_context():
        replica().start()
    # Everything built so far lives as long as the process: keep it out of the collector's full
    # passes, which otherwise stall delivery for tens of milliseconds on a large heap.
    gc.freeze()
    host, port, backlog = app.config["WEB_HOST"], app.config["WEB_PORT"], app.config["LISTEN_BACKLOG"]
    app.logger.info("web replica listening on %s:%d (%s)", host, port, ASYNC_MODE)  # which interfaces, said once
    if ASYNC_MODE == "eventlet":
        import eventlet.green.socket
        import eventlet.wsgi

        # Flask-SocketIO's run() listens with eventlet's default backlog of 50; and eventlet's WSGI
        # server serves at most 1024 connections at once unless told otherwise.
        family, *_, address = eventlet.green.socket.getaddrinfo(host, port)[0]
        listener = eventlet.listen(address, family, backlog=backlog)
        from ticker.web.kite_quotes import MAX_REQUEST_LINE_BYTES
        from ticker.web.kite_rest import request_line_too_long

        # eventlet (0.41) answers a longer request line with this module global, an empty body
        # by default: JSON in the service's shape instead, as under gevent.
        eventlet.wsgi.RESPONSE_414 = request_line_too_long("HTTP/1.0")

        eventlet.wsgi.server(listener, app, log_output=False, max_size=app.config["MAX_CONNECTIONS"] + 100,
                             url_length_limit=MAX_REQUEST_LINE_BYTES)  # Kite's 1000 instruments a quote
    elif ASYNC_MODE == "gevent":
        from ticker.web.gevent_server import WebSocketClosingHandler

        socketio.run(app, host=host, port=port, log_output=False, handler_class=WebSocketClosingHandler,
                     backlog=backlog)
    else:
        socketio.run(app, host=host, port=port, log_output=False)
