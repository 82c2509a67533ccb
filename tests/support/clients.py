"""A real python-socketio client that records every event it receives."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any

import requests
import socketio
from prometheus_client.parser import text_string_to_metric_families

from tests.support.processes import wait_for


def clients_connected(url: str) -> float:
    """The `ticker_clients_connected` gauge of the replica at `url` (`http://host:port`)."""
    scrape = requests.get(f"{url}/metrics", params={"scope": "replica"}, timeout=5).text
    family = next(f for f in text_string_to_metric_families(scrape) if f.name == "ticker_clients_connected")
    return sum(sample.value for sample in family.samples)


EVENTS = ("connected", "subscribed", "unsubscribed", "ticks", "pong", "error", "reauthed", "candles")


class RecordingClient:
    def __init__(self, **options: Any) -> None:
        """`options` go to `socketio.Client` (e.g. `websocket_extra_options`)."""
        self.sio = socketio.Client(reconnection=False, **options)
        self.events: dict[str, list[Any]] = defaultdict(list)
        self.lock = threading.Lock()
        self.connect_error: Any = None
        for name in EVENTS:
            self.sio.on(name, self._recorder(name))
        self.sio.on("connect_error", self._on_connect_error)

    def _recorder(self, name: str):
        def record(data: Any = None) -> None:
            with self.lock:
                self.events[name].append(data)

        return record

    def _on_connect_error(self, data: Any = None) -> None:
        self.connect_error = data

    def connect(self, url: str, token: str | None = None, **kwargs: Any) -> RecordingClient:
        auth = {"token": token} if token is not None else None
        kwargs.setdefault("transports", ["websocket"])
        self.sio.connect(url, auth=auth, wait_timeout=5, **kwargs)
        return self

    def try_connect(self, url: str, **kwargs: Any) -> Any:
        """Connect expecting a refusal; returns the `connect_error` data: {code, message}."""
        kwargs.setdefault("transports", ["websocket"])
        try:
            self.sio.connect(url, wait_timeout=5, **kwargs)
        except socketio.exceptions.ConnectionError:
            pass
        else:
            self.sio.disconnect()
            raise AssertionError("the connection was accepted")
        error = wait_for(lambda: self.connect_error, 5, "connect_error")
        assert error["message"] == error["data"]["message"], error
        return error["data"]

    def call(self, event: str, data: Any = None, timeout: float = 5) -> Any:
        return self.sio.call(event, data, timeout=timeout)

    def ticks(self) -> list[dict]:
        with self.lock:
            return [tick for frame in self.events["ticks"] for tick in frame]

    def ticks_for(self, token: int) -> list[dict]:
        return [tick for tick in self.ticks() if tick["instrument_token"] == token]

    def wait_for_ticks(self, tokens: list[int], count: int = 1, timeout: float = 10) -> None:
        wait_for(lambda: all(len(self.ticks_for(t)) >= count for t in tokens), timeout, f"{count} ticks for {tokens}")

    def close(self) -> None:
        if self.sio.connected:
            self.sio.disconnect()
        time.sleep(0)
