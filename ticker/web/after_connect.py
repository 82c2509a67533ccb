"""Work that must follow the Socket.IO CONNECT packet: the `connected` event.

python-socketio (5.18.1, the version pinned in requirements.txt) runs the `connect` handler
inside `Server._handle_connect` and sends the CONNECT packet (`40{"sid": ...}`) only after the
handler returns, since the handler may still refuse the connection. Anything the handler
emits therefore reaches the client before CONNECT, which the Socket.IO protocol does not
expect (socket.io-client buffers such events; other clients drop them). The library has no
hook that runs after CONNECT, so `install` wraps that one private method: once it returns,
the callbacks the handler deferred (`defer`) run, if the connection was accepted, and are
dropped otherwise. `_handle_connect(eio_sid, namespace, data)` runs to its end in the greenlet
that handles the packet, under eventlet and gevent and with either transport, so the callbacks
run in that greenlet, right after CONNECT was queued on the same Engine.IO socket.

If an upgrade of python-socketio renames or reshapes `_handle_connect`, `install` fails at
startup rather than sending events out of order (tests/web/test_after_connect.py).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_pending: dict[str, list[Callable[[], None]]] = {}  # Engine.IO sid -> callbacks awaiting CONNECT
EXPECTED_PARAMETERS = ["eio_sid", "namespace", "data"]


def defer(eio_sid: str, callback: Callable[[], None]) -> None:
    """Run `callback` right after the CONNECT packet of the connection being accepted (call it
    from the `connect` handler); it never runs if the handler refuses the connection."""
    _pending.setdefault(eio_sid, []).append(callback)


def install(server: Any) -> None:
    """Wrap `server._handle_connect` (a python-socketio `Server`) to run deferred callbacks."""
    handle = server._handle_connect
    if list(inspect.signature(handle).parameters) != EXPECTED_PARAMETERS:
        raise RuntimeError("python-socketio's Server._handle_connect changed: check ticker/web/after_connect.py")

    def handle_connect(eio_sid: str, namespace: str | None, data: Any) -> None:
        try:
            handle(eio_sid, namespace, data)
        finally:
            callbacks = _pending.pop(eio_sid, [])
        sid = server.manager.sid_from_eio_sid(eio_sid, namespace or "/")
        if sid is None or not server.manager.is_connected(sid, namespace or "/"):
            return  # refused: the connect_error went out instead
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("a step after the connect of %s failed", sid)

    server._handle_connect = handle_connect
