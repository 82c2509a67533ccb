"""A crowd of real Socket.IO clients arriving at once, as they do after a replica restart, a
deploy or the market open: python-socketio's asyncio client, hundreds in one event loop.

Each client connects, subscribes as soon as it hears `connected`, and records every reply,
error and tick; nothing retries, so every error the server answers is counted.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import socketio


@dataclass(eq=False)
class CrowdClient:
    """One client of the crowd and what it observed."""

    number: int
    sio: socketio.AsyncClient
    reply: Any = None
    errors: list[dict] = field(default_factory=list)
    refused: Any = None
    first_tick_at: float | None = None
    ticks: int = 0
    events: list[tuple[str, Any]] = field(default_factory=list)

    @property
    def subscribed(self) -> bool:
        return isinstance(self.reply, dict) and "tokens" in self.reply and not self.reply.get("error")


@dataclass
class CrowdReport:
    """What the crowd saw: per client, and summed."""

    clients: list[CrowdClient]
    started: float

    def error_codes(self) -> Counter[str]:
        codes: Counter[str] = Counter()
        for client in self.clients:
            codes.update(error.get("code", "?") for error in client.errors)
            if isinstance(client.reply, dict) and client.reply.get("error"):
                codes["ack:" + client.reply["error"].get("code", "?")] += 1
            if client.refused is not None:
                codes["refused:" + str((client.refused or {}).get("code", client.refused))] += 1
        return codes

    def subscribed(self) -> int:
        return sum(client.subscribed for client in self.clients)

    def receiving(self) -> int:
        return sum(client.first_tick_at is not None for client in self.clients)

    def seconds_until_all_receive(self) -> float | None:
        if self.receiving() < len(self.clients):
            return None
        return max(client.first_tick_at for client in self.clients) - self.started


async def _run_client(client: CrowdClient, url: str, token: str, subscribe: dict, connect_timeout: float) -> None:
    sio = client.sio

    @sio.on("ticks")
    async def on_ticks(ticks: list) -> None:
        client.ticks += len(ticks)
        if client.first_tick_at is None:
            client.first_tick_at = time.monotonic()

    @sio.on("error")
    async def on_error(error: Any) -> None:
        client.errors.append(error if isinstance(error, dict) else {"code": str(error)})

    @sio.on("*")
    async def on_other(event: str, data: Any = None) -> None:
        client.events.append((event, data))

    @sio.on("connect_error")
    async def on_connect_error(data: Any = None) -> None:
        client.refused = data

    try:
        await sio.connect(url, auth={"token": token}, transports=["websocket"], wait_timeout=connect_timeout)
    except socketio.exceptions.ConnectionError as exc:
        if client.refused is None:
            client.refused = {"code": f"client:{exc}"}
        return
    try:
        client.reply = await sio.call("subscribe", subscribe, timeout=60)
    except Exception as exc:  # noqa: BLE001  (a timeout is what the client observed)
        client.reply = {"error": {"code": f"client:{type(exc).__name__}"}}


async def _crowd(url: str, tokens: list[str], subscribe: dict, settle: float, connect_timeout: float) -> CrowdReport:
    clients = [CrowdClient(n, socketio.AsyncClient(reconnection=False)) for n in range(len(tokens))]
    report = CrowdReport(clients, time.monotonic())
    await asyncio.gather(*(_run_client(c, url, t, subscribe, connect_timeout) for c, t in zip(clients, tokens,
                                                                                               strict=True)))
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline and report.receiving() < len(clients):
        await asyncio.sleep(0.1)
    await asyncio.gather(*(c.sio.disconnect() for c in clients if c.sio.connected), return_exceptions=True)
    return report


def crowd(url: str, tokens: list[str], subscribe: dict, settle: float = 30.0,
          connect_timeout: float = 30.0) -> CrowdReport:
    """Connect one client per JWT in `tokens` to `url` all at once; each subscribes with
    `subscribe` as soon as it is connected. Waits up to `settle` seconds for every client to
    receive a tick, then disconnects them all and reports."""
    return asyncio.run(_crowd(url, tokens, subscribe, settle, connect_timeout))
