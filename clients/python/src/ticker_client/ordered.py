"""Socket.IO events handled one at a time, in the order they arrived.

python-engineio's threaded client (4.x; this relies on 4.15's `Client._receive_packet`, which
hands each MESSAGE packet to `_trigger_event("message", data, run_async=True)`) starts a thread
per incoming message. Two `ticks` frames then race: a slow `on_ticks` is overtaken by the next
frame, callbacks overlap, and a later `seq` can reach the gap tracker before an earlier one.
kiteconnect's `KiteTicker` calls back on one thread, in order, and strategy code relies on it.

`serialize(sio)` keeps python-engineio's read loop and queues each message, in arrival order,
for one dispatcher thread per connection. The queue is bounded: a callback slower than the feed
fills it, the read loop then waits, TCP pushes back, and the service treats the client as slow
(conflation, then `slow_consumer`; docs/API.md) instead of this process buffering without end.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import socketio

PENDING_MAX = 1000  # messages read but not yet handled; then the read loop waits


class Serial:
    """The dispatcher of one connection: `after_pending(fn)` runs `fn` once every message
    received before it has been handled (a disconnect is told after the ticks that preceded it)."""

    def __init__(self, handle: Callable[..., Any]):
        self._handle = handle
        self._inbox: queue.Queue = queue.Queue(maxsize=PENDING_MAX)
        self._thread = threading.Thread(target=self._run, name="ticker-client-events", daemon=True)
        self._thread.start()

    def put(self, *args: Any, still_open: Callable[[], bool] = lambda: True) -> None:
        """Queue a message; while the queue is full, wait, unless the connection is closing (a
        callback that closes the client must not wait for the read loop that waits for it)."""
        while True:
            try:
                self._inbox.put((self._handle, args), timeout=0.25)
                return
            except queue.Full:
                if not still_open():
                    return

    def after_pending(self, fn: Callable[[], Any]) -> None:
        self._inbox.put((fn, ()))

    def stop(self) -> None:
        """End the dispatcher once what is queued has been handled."""
        self._inbox.put(None)

    def _run(self) -> None:
        while True:
            item = self._inbox.get()
            if item is None:
                return
            fn, args = item
            fn(*args)


def serialize(sio: socketio.Client) -> Serial:
    """Make `sio` (a python-socketio `Client`, before it connects) hand its incoming messages to
    one thread, in order; returns that thread's `Serial`. Raises RuntimeError if the installed
    python-engineio has no `_trigger_event` to route through (an incompatible version)."""
    eio = sio.eio
    trigger = getattr(eio, "_trigger_event", None)
    if trigger is None:
        raise RuntimeError("python-engineio without Client._trigger_event: ticker_client needs 4.x")
    serial = Serial(lambda *args: trigger("message", *args, run_async=False))

    def ordered_trigger(event: str, *args: Any, **kwargs: Any) -> Any:
        if event == "message" and kwargs.get("run_async"):
            serial.put(*args, still_open=lambda: eio.state == "connected")  # the read loop: arrival order
            return None
        return trigger(event, *args, **kwargs)

    eio._trigger_event = ordered_trigger
    return serial
