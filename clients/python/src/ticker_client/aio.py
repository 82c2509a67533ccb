"""`AsyncTicker`: the ticker service as an asyncio stream, for new code.

    client = AsyncTicker("http://127.0.0.1:5000", token_provider=fetch_jwt)
    async for ticks in client.stream([738561, 256265], mode="full"):
        ...

Each `stream` holds one Socket.IO connection (python-socketio's `AsyncClient`, which needs
aiohttp: `pip install ticker-client[asyncio]`) and keeps it: reconnects with backoff and jitter,
resubscribes, renews the JWT before `exp`, drops stale ticks and reports `seq` gaps.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import socketio

from . import policy
from .kite import refusal_of, socketio_url
from .ticks import GapTracker, with_datetimes

log = logging.getLogger(__name__)

TokenProvider = Callable[[], str | Awaitable[str]]
REQUEST_TIMEOUT_SECS = 10  # a subscribe the server has not acked by then is sent again


class TickerError(Exception):
    """The stream ended for good: `code` is the service's (e.g. `token_expired` with no token
    provider to renew it), or `reconnect_failed` after `reconnect_max_tries` attempts."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class AsyncTicker:
    """A client of the ticker service for asyncio code.

    - `root`: the service's URL; `access_token` a JWT, or `token_provider` a callable (plain or
      async) returning a fresh one, called before each connect and before `exp`.
    - `reconnect_max_tries`: None (the default) retries for ever; `reconnect_max_delay` seconds.
    - Callbacks (attributes, plain or async, optional): `on_error(code, message)` for every code
      the service sends, `on_gap(token, expected_seq, got_seq)`, `on_reconnect(attempt)`.
    """

    def __init__(self, root: str, access_token: str | None = None, *, token_provider: TokenProvider | None = None,
                 reconnect_max_tries: int | None = None, reconnect_max_delay: float = 60,
                 connect_timeout: float = 30, transports: tuple = ("websocket",)):
        if access_token is None and token_provider is None:
            raise ValueError("pass access_token (the service's JWT) or token_provider")
        self.root = socketio_url(root)
        self.access_token = access_token
        self.token_provider = token_provider
        self.reconnect_max_tries = reconnect_max_tries
        self.reconnect_max_delay = reconnect_max_delay
        self.connect_timeout = connect_timeout
        self.transports = list(transports)
        self.on_error: Callable | None = None
        self.on_gap: Callable | None = None
        self.on_reconnect: Callable | None = None

    async def stream(self, tokens: list[int], mode: str = "quote") -> AsyncIterator[list[dict[str, Any]]]:
        """Yield lists of ticks of `tokens` in `mode`, as the service sends them (with `seq`,
        `epoch`, `ingest_ts`, and `snapshot`/`age_ms` on snapshots), timestamps as datetimes,
        stale repeats dropped. Runs until the caller stops iterating; raises `TickerError` when
        reconnecting cannot help."""
        queue: asyncio.Queue = asyncio.Queue()
        runner = asyncio.ensure_future(_Stream(self, list(tokens), mode, queue).run())
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)

    async def _token(self) -> str:
        if self.token_provider is None:
            return self.access_token  # type: ignore[return-value]
        token = self.token_provider()
        return await token if inspect.isawaitable(token) else token

    async def _call(self, name: str, *args: Any) -> None:
        callback = getattr(self, name)
        if callback is None:
            return
        try:
            result = callback(*args)
            if inspect.isawaitable(result):
                await result
        except Exception:  # noqa: BLE001 - a failing callback must not end the stream
            log.exception("%s raised", name)


class _Stream:
    """One `stream()`'s connection and its reconnect loop."""

    def __init__(self, owner: AsyncTicker, tokens: list[int], mode: str, queue: asyncio.Queue):
        self.owner, self.tokens, self.mode, self.queue = owner, tokens, mode, queue
        self.gaps = GapTracker()
        self.token = ""
        self.reauth_task: asyncio.Task | None = None

    async def run(self) -> None:
        attempt = 0
        while True:
            connected, final = await self.session()
            if final:
                return
            attempt = 1 if connected else attempt + 1
            tries = self.owner.reconnect_max_tries
            if tries is not None and attempt > tries:
                self.queue.put_nowait(TickerError("reconnect_failed", f"gave up after {tries} attempts"))
                return
            await self.owner._call("on_reconnect", attempt)
            await asyncio.sleep(policy.backoff_delay(attempt, self.owner.reconnect_max_delay))

    async def session(self) -> tuple:
        """One connection: `(connected, final)`."""
        self.token = await self.owner._token()
        sio = socketio.AsyncClient(reconnection=False)
        closed, refusal = asyncio.Event(), {}
        sio.on("connect_error", lambda data=None: refusal.update(refusal_of(data)))
        sio.on("disconnect", lambda *_: closed.set())
        sio.on("ticks", self.on_ticks)
        sio.on("error", lambda error: self.on_error(sio, error))
        try:
            await sio.connect(self.owner.root, auth={"token": self.token}, transports=self.owner.transports,
                              wait_timeout=self.owner.connect_timeout)
        except socketio.exceptions.ConnectionError as exc:
            code, message = refusal.get("code"), refusal.get("message") or str(exc)
            await self.owner._call("on_error", code or "connect_failed", message)
            await sio.disconnect()
            if policy.connect_refusal_is_final(code, self.owner.token_provider is not None):
                self.queue.put_nowait(TickerError(code, message))
                return False, True
            return False, False
        try:
            self.schedule_reauth(sio)
            subscribing = asyncio.ensure_future(self.subscribe(sio))
            await closed.wait()
            subscribing.cancel()
        finally:
            if self.reauth_task is not None:
                self.reauth_task.cancel()
            await sio.disconnect()
        return True, False

    async def subscribe(self, sio: socketio.AsyncClient, attempt: int = 0) -> None:
        for start in range(0, len(self.tokens), 1000):
            chunk = self.tokens[start:start + 1000]
            while True:
                try:
                    reply = await sio.call("subscribe", {"tokens": chunk, "mode": self.mode},
                                           timeout=REQUEST_TIMEOUT_SECS)
                except socketio.exceptions.TimeoutError:
                    reply = {"error": {"code": "server_busy", "message": "no ack"}}
                error = reply.get("error") if isinstance(reply, dict) else None
                if error and error.get("code") in policy.RETRY_REQUEST_CODES:
                    attempt += 1
                    await asyncio.sleep(policy.backoff_delay(attempt, self.owner.reconnect_max_delay))
                    continue
                if error:
                    await self.owner._call("on_error", error.get("code"), error.get("message"))
                for rejected in (reply or {}).get("rejected", ()):
                    await self.owner._call("on_error", rejected.get("code"),
                                           f"{rejected.get('token')}: {rejected.get('message')}")
                break

    async def on_ticks(self, ticks: list) -> None:
        fresh = []
        for tick in ticks:
            is_new, gap = self.gaps.observe(tick)
            if gap is not None:
                await self.owner._call("on_gap", tick["instrument_token"], *gap)
            if is_new:
                fresh.append(with_datetimes(tick))
        if fresh:
            self.queue.put_nowait(fresh)

    async def on_error(self, sio: socketio.AsyncClient, error: dict[str, Any]) -> None:
        code = error.get("code")
        if code == "token_expired" and "grace_secs" in error and self.owner.token_provider:
            await self.reauth(sio)
            return
        await self.owner._call("on_error", code, error.get("message"))

    def schedule_reauth(self, sio: socketio.AsyncClient) -> None:
        delay = policy.reauth_delay(self.token) if self.owner.token_provider else None
        if delay is not None:
            self.reauth_task = asyncio.ensure_future(self.reauth_after(sio, delay))

    async def reauth_after(self, sio: socketio.AsyncClient, delay: float) -> None:
        await asyncio.sleep(delay)
        await self.reauth(sio)

    async def reauth(self, sio: socketio.AsyncClient) -> None:
        token = await self.owner._token()
        reply = await sio.call("reauth", {"token": token}, timeout=REQUEST_TIMEOUT_SECS)
        if isinstance(reply, dict) and "error" in reply:
            await self.owner._call("on_error", reply["error"].get("code"), reply["error"].get("message"))
            return
        self.token = token
        self.schedule_reauth(sio)
