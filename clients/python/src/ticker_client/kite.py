"""`KiteTicker`: `kiteconnect.KiteTicker`'s interface over the ticker service's Socket.IO protocol.

Strategy code written against `kiteconnect.KiteTicker` runs with only its import and constructor
changed: the same callbacks with the same arguments, the same methods, the same tick dicts (plus
`seq` and `epoch`), called one at a time in the order the service sent them (`ordered`).
Underneath, one `socketio.Client` per connection (threads, no Twisted), and a reconnect loop of
this module's own: each attempt asks `token_provider` for a fresh JWT.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

import socketio

from . import policy
from .ordered import Serial, serialize
from .subscriptions import Subscriptions
from .ticks import GapTracker, candle_of, to_kite

log = logging.getLogger(__name__)

CLOSE_NORMAL = 1000  # WebSocket close codes, as `on_close` receives them from kiteconnect
CLOSE_ABNORMAL = 1006


def socketio_url(root: str) -> str:
    """`root` as python-socketio wants it: `ws://` and `wss://` become `http://` and `https://`."""
    if root.startswith("ws://"):
        return "http://" + root[len("ws://"):]
    if root.startswith("wss://"):
        return "https://" + root[len("wss://"):]
    return root


def refusal_of(data: Any) -> dict[str, Any]:
    """`{code, message}` of a `connect_error`: the server's `{code, message}` arrives as its `data`
    (python-socketio hands `{message, data}`)."""
    if isinstance(data, dict) and isinstance(data.get("data"), dict):
        return data["data"]
    return data if isinstance(data, dict) else {}


class KiteTicker:
    """A client of the ticker service with `kiteconnect.KiteTicker`'s interface.

    - `api_key`: accepted for compatibility and ignored (the service's JWT says who you are).
    - `access_token`: the service's JWT; or pass `token_provider`, a callable returning a fresh
      JWT, called before every connect attempt and to renew the token (`reauth`) before its `exp`.
    - `root`: the service's URL (`http://host:port`; `ws://` and `wss://` work too).
    - `reconnect`, `reconnect_max_tries` (at most 300), `reconnect_max_delay` (seconds, at least
      5), `connect_timeout` (seconds): as in kiteconnect.
    - `transports`: Engine.IO transports, WebSocket only by default.

    Callbacks (attributes, all optional), as kiteconnect calls them: `on_ticks(ws, ticks)`,
    `on_connect(ws, response)` (`response` is the service's `connected` payload),
    `on_close(ws, code, reason)`, `on_error(ws, code, reason)` (`code` is the service's string
    code, such as `slow_consumer` or `upstream_unavailable`, or a WebSocket close code for a
    connection lost without one), `on_reconnect(ws, attempts_count)`, `on_noreconnect(ws)`,
    `on_message(ws, payload, is_binary)` (the JSON text of each event), `on_open(ws)`,
    `on_order_update(ws, data)` (kept for compatibility; the service does not stream orders).
    Besides: `on_gap(ws, token, expected_seq, got_seq)` when ticks of a token went missing,
    `on_upstream_unavailable(ws, tokens, reason)` and `on_upstream_restored(ws, tokens)`; and
    for live candles (`subscribe_candles`), `on_candles(ws, candles)` and
    `on_candles_restored(ws)` (their outage comes to `on_error` as `candles_unavailable`).
    """

    MODE_FULL = "full"
    MODE_QUOTE = "quote"
    MODE_LTP = "ltp"
    ROOT_URI = "http://127.0.0.1:5000"  # `make run`'s web replica
    RECONNECT_MAX_DELAY = 60
    RECONNECT_MAX_TRIES = 50
    CONNECT_TIMEOUT = 30

    def __init__(self, api_key: str | None = None, access_token: str | None = None, debug: bool = False,
                 root: str | None = None, reconnect: bool = True, reconnect_max_tries: int = RECONNECT_MAX_TRIES,
                 reconnect_max_delay: float = RECONNECT_MAX_DELAY, connect_timeout: float = CONNECT_TIMEOUT,
                 token_provider: Callable[[], str] | None = None, transports: Iterable[str] = ("websocket",)):
        if access_token is None and token_provider is None:
            raise ValueError("pass access_token (the service's JWT) or token_provider")
        self.api_key = api_key
        self.access_token = access_token
        self.token_provider = token_provider
        self.debug = debug
        self.root = root or self.ROOT_URI
        self.reconnect = reconnect
        self.reconnect_max_tries = min(reconnect_max_tries, policy.MAX_MAX_TRIES)
        self.reconnect_max_delay = max(reconnect_max_delay, policy.MIN_MAX_DELAY_SECS)
        self.connect_timeout = connect_timeout
        self.transports = list(transports)
        self.ws = None  # kiteconnect keeps its protocol object here; this is the socketio.Client
        # The client whose `connected` event arrived: requests may go out from then on. Not
        # `sio.connected`, which python-socketio sets only when connect() returns, after the
        # `connected` event has run when both came in one polling response.
        self._ready: socketio.Client | None = None
        for name in ("on_ticks", "on_open", "on_close", "on_error", "on_connect", "on_message", "on_reconnect",
                     "on_noreconnect", "on_order_update", "on_gap", "on_upstream_unavailable",
                     "on_upstream_restored", "on_candles", "on_candles_restored"):
            setattr(self, name, None)
        self._subscriptions = Subscriptions()
        self._gaps = GapTracker()
        self._lock = threading.Lock()
        self._hang_up_lock = threading.Lock()
        self._in_flight = False  # a subscribe/unsubscribe awaits its ack
        self._refusals = 0  # requests refused for now in a row (`server_busy`…): their backoff grows
        self._retrying = True  # cleared by stop_retry()
        self._stopped = threading.Event()  # stop() / close(): no more connections
        self._reauth_timer: threading.Timer | None = None
        self._close_code: Any = None
        self._token = access_token
        self.websocket_thread: threading.Thread | None = None

    @property
    def subscribed_tokens(self) -> dict[int, str]:
        """Token → mode of every subscription, held or waiting for a connection (as kiteconnect's)."""
        return dict(self._subscriptions.wanted)

    # -- kiteconnect's methods ---------------------------------------------------------------

    def connect(self, threaded: bool = False, disable_ssl_verification: bool = False,
                proxy: dict[str, Any] | None = None) -> None:
        """Connect, and keep reconnecting until `stop()`, `close()` or `on_noreconnect`.
        Blocks unless `threaded` (then runs in the daemon thread `websocket_thread`). `proxy` is
        `{"host": …, "port": …}`, an HTTP proxy for the WebSocket."""
        self._stopped.clear()
        self._retrying = True
        options: dict[str, Any] = {"ssl_verify": not disable_ssl_verification}
        if proxy:
            options["websocket_extra_options"] = {"http_proxy_host": proxy["host"], "http_proxy_port": proxy["port"]}
        if threaded:
            self.websocket_thread = threading.Thread(target=self._run, args=(options,), daemon=True)
            self.websocket_thread.start()
        else:
            self._run(options)

    def is_connected(self) -> bool:
        sio = self.ws
        return bool(sio is not None and sio.connected)

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        """Close the connection and do not reconnect."""
        self.stop_retry()
        self._stopped.set()
        self._disconnect()

    def stop(self) -> None:
        """Stop for good: close the connection, no reconnect (kiteconnect stops its reactor here)."""
        self.close()

    def stop_retry(self) -> None:
        """Do not reconnect once the current connection ends."""
        self._retrying = False

    def subscribe(self, instrument_tokens) -> bool:
        """Subscribe to `instrument_tokens` in quote mode (Kite's default for a new subscription)."""
        self._subscriptions.want(instrument_tokens, self.MODE_QUOTE)
        self._pump()
        return True

    def unsubscribe(self, instrument_tokens) -> bool:
        self._subscriptions.drop(instrument_tokens)
        self._gaps.forget(instrument_tokens)
        self._pump()
        return True

    def set_mode(self, mode: str, instrument_tokens) -> bool:
        """Stream `instrument_tokens` in `mode` (`MODE_LTP`, `MODE_QUOTE` or `MODE_FULL`)."""
        if mode not in (self.MODE_LTP, self.MODE_QUOTE, self.MODE_FULL):
            raise ValueError(f"unknown mode {mode!r}")
        self._subscriptions.want(instrument_tokens, mode)
        self._pump()
        return True

    def subscribe_candles(self, instrument_tokens, intervals) -> bool:
        """Receive live candles of `intervals` (Kite's names: `second`, `minute`, `5minute`,
        `15minute`, `60minute`; those the service builds, `CANDLE_INTERVALS`) for
        `instrument_tokens`, replacing the intervals they had; tokens not subscribed yet are
        subscribed in quote mode. Empty `intervals` stops their candles, not their ticks.

        `on_candles(ws, candles)` gets lists of candle dicts (docs/API.md, "Live candles"):
        first today's candles so far of each token and interval, then each change at most once
        a frame; `date` is a timezone-aware datetime in IST as `KiteConnect.historical_data`
        gives it, `closed` is True once the candle is complete. After a reconnect today's
        candles come again: key them by `(instrument_token, interval, date)`. An interval the
        service does not build comes to `on_error` as `bad_request`, and the tokens' ticks go
        on without candles."""
        self._subscriptions.want_candles(instrument_tokens, intervals, self.MODE_QUOTE)
        self._pump()
        return True

    def resubscribe(self) -> None:
        """Send every subscription again (done by itself after each reconnect)."""
        self._subscriptions.connection_lost()
        self._pump()

    # -- the reconnect loop ------------------------------------------------------------------

    def _run(self, options: dict[str, Any]) -> None:
        attempt = 0
        while not self._stopped.is_set():
            connected, final = self._session(options)
            if self._stopped.is_set() or not self._retrying:
                break
            if final or not self.reconnect:
                self._call("on_noreconnect")
                break
            attempt = 1 if connected else attempt + 1
            if attempt > self.reconnect_max_tries:
                self._call("on_noreconnect")
                break
            self._call("on_reconnect", attempt)
            if self._stopped.wait(policy.backoff_delay(attempt, self.reconnect_max_delay)):
                break

    def _session(self, options: dict[str, Any]) -> tuple:
        """One connection, from connect to close: `(connected, final)`."""
        try:
            self._token = self.token_provider() if self.token_provider else self.access_token
        except Exception as exc:  # noqa: BLE001 - the provider is the user's code: report and retry
            self._call("on_error", "token_provider_failed", str(exc))
            return False, False
        sio = socketio.Client(reconnection=False, **options)
        serial = serialize(sio)  # callbacks one at a time, in order, as kiteconnect makes them
        closed = threading.Event()
        refusal: dict[str, Any] = {}
        self._register(sio, closed, refusal, serial)
        self._close_code = None
        self.ws = sio  # before connecting: `connected` may arrive before connect() returns
        try:
            sio.connect(socketio_url(self.root), auth={"token": self._token}, transports=self.transports,
                        wait_timeout=self.connect_timeout)
        except socketio.exceptions.ConnectionError as exc:
            code = refusal.get("code")
            self._call("on_error", code or CLOSE_ABNORMAL, refusal.get("message") or str(exc))
            self._hang_up(sio)
            serial.stop()
            return False, policy.connect_refusal_is_final(code, self.token_provider is not None)
        self._call("on_open")
        closed.wait()
        self._end_session(sio)
        serial.stop()
        return True, False

    def _end_session(self, sio: socketio.Client) -> None:
        self._ready = None
        self._cancel_reauth()
        self._subscriptions.connection_lost()
        with self._lock:
            self._in_flight = False
            self._refusals = 0
        clean = self._stopped.is_set() or not self._retrying
        code = self._close_code or (CLOSE_NORMAL if clean else CLOSE_ABNORMAL)
        if code == CLOSE_ABNORMAL:
            self._call("on_error", code, "connection lost")
        self._call("on_close", code, "closed by the client" if clean else "connection lost")
        self._hang_up(sio)

    def _disconnect(self) -> None:
        sio = self.ws
        if sio is not None:
            self._hang_up(sio)

    def _hang_up(self, sio: socketio.Client) -> None:
        """Disconnect `sio` if its Engine.IO session is still open, else leave it to whoever is
        closing it. `close()` and the end of a session both hang up, from two threads: a second
        `disconnect()` while the first is under way runs python-engineio's `Client._reset`, which
        empties the send queue (python-engineio 4.x), so the CLOSE packet never left over
        long-polling, the service kept the session until its ping timed out, and `close()` waited
        out Engine.IO's 30-second write-loop timeout."""
        with self._hang_up_lock:
            if sio.eio.state == "connected":
                self._quietly(sio.disconnect)

    # -- events from the service -------------------------------------------------------------

    def _register(self, sio: socketio.Client, closed: threading.Event, refusal: dict[str, Any],
                  serial: Serial) -> None:
        def on_connect_error(data: Any = None) -> None:
            refusal.update(refusal_of(data))

        def on_disconnect(*_reason: Any) -> None:
            serial.after_pending(closed.set)  # `on_close` after the callbacks of what came before

        sio.on("connect_error", on_connect_error)
        sio.on("disconnect", on_disconnect)
        sio.on("connected", self._on_connected)
        sio.on("ticks", self._on_ticks)
        sio.on("error", self._on_service_error)
        sio.on("unsubscribed", self._on_unsubscribed)
        sio.on("upstream_restored", self._on_upstream_restored)
        sio.on("candles", self._on_candles)
        sio.on("candles_restored", self._on_candles_restored)

    def _on_connected(self, hello: dict[str, Any]) -> None:
        self._ready = self.ws
        self._raw("connected", hello)
        limit = (hello.get("limits") or {}).get("max_tokens_per_request")
        if isinstance(limit, int) and limit > 0:
            self._subscriptions.max_tokens_per_request = limit
        self._schedule_reauth()
        self._call("on_connect", hello)
        self._pump()

    def _on_ticks(self, ticks: list) -> None:
        self._raw("ticks", ticks)
        fresh = []
        for tick in ticks:
            is_new, gap = self._gaps.observe(tick)
            if gap is not None:
                self._call("on_gap", tick["instrument_token"], *gap)
            if is_new:
                fresh.append(to_kite(tick))
        if fresh:
            self._call("on_ticks", fresh)

    def _on_service_error(self, error: dict[str, Any]) -> None:
        self._raw("error", error)
        code, message = error.get("code"), error.get("message")
        if code == "token_expired" and "grace_secs" in error and self.token_provider:
            self._reauth()  # the warning before the disconnect: a fresh token keeps the connection
            return
        if code in policy.CLOSING_CODES:
            self._close_code = code
        if code == "upstream_unavailable":
            self._call("on_upstream_unavailable", error.get("tokens", []), error.get("reason"))
        self._call("on_error", code, message)

    def _on_unsubscribed(self, event: dict[str, Any]) -> None:
        self._raw("unsubscribed", event)
        if event.get("reason") in policy.SERVER_UNSUBSCRIBE_REASONS:
            self._subscriptions.withdrawn(event.get("tokens", []))
            self._gaps.forget(event.get("tokens", []))
            if event["reason"] != "capacity_exhausted":  # that one came as an `error` already
                self._call("on_error", event["reason"], f"unsubscribed by the server: {event.get('tokens')}")

    def _on_upstream_restored(self, event: dict[str, Any]) -> None:
        self._raw("upstream_restored", event)
        self._call("on_upstream_restored", event.get("tokens", []))

    def _on_candles(self, candles: list) -> None:
        self._raw("candles", candles)
        wanted = self._subscriptions.wanted_candles
        mine = [candle_of(c) for c in candles if c.get("interval") in wanted.get(c.get("instrument_token"), ())]
        if mine:  # not those of tokens or intervals given up since
            self._call("on_candles", mine)

    def _on_candles_restored(self, event: Any = None) -> None:
        self._raw("candles_restored", event)
        self._call("on_candles_restored")

    # -- subscriptions: one request at a time ------------------------------------------------

    def _pump(self) -> None:
        sio = self.ws
        if sio is None or sio is not self._ready:
            return
        with self._lock:
            if self._in_flight:
                return
            request = self._subscriptions.next_request()
            if request is None:
                return
            self._in_flight = True
        event, payload = request
        try:
            sio.emit(event, payload, callback=lambda reply=None: self._on_ack(sio, event, payload, reply))
        except socketio.exceptions.SocketIOError:
            with self._lock:
                self._in_flight = False  # the connection is going: the next one resubscribes

    def _on_ack(self, sio: socketio.Client, event: str, payload: dict[str, Any], reply: Any) -> None:
        if sio is not self.ws:
            return
        error = reply.get("error") if isinstance(reply, dict) else None
        for code, message in self._subscriptions.acked(event, payload, reply):
            self._call("on_error", code, message)
        if error and error.get("code") in policy.RETRY_REQUEST_CODES:
            with self._lock:
                self._refusals += 1
                attempt = self._refusals
            self._later(policy.backoff_delay(attempt, self.reconnect_max_delay), self._retry_request, sio)
            return
        with self._lock:
            self._refusals = 0
        if error and event == "subscribe":  # `on_error` comes from the `error` event the service sends with it
            self._subscriptions.refused(payload)
        with self._lock:
            self._in_flight = False
        self._pump()

    def _retry_request(self, sio: socketio.Client) -> None:
        with self._lock:
            self._in_flight = False
        if sio is self.ws:
            self._pump()

    # -- JWT renewal ------------------------------------------------------------------------

    def _schedule_reauth(self) -> None:
        self._cancel_reauth()
        if not self.token_provider or not self._token:
            return
        delay = policy.reauth_delay(self._token)
        if delay is not None:
            self._reauth_timer = threading.Timer(delay, self._reauth)
            self._reauth_timer.daemon = True
            self._reauth_timer.start()

    def _cancel_reauth(self) -> None:
        if self._reauth_timer is not None:
            self._reauth_timer.cancel()
            self._reauth_timer = None

    def _reauth(self) -> None:
        sio = self.ws
        if sio is None or not sio.connected or not self.token_provider:
            return
        try:
            token = self.token_provider()
        except Exception as exc:  # noqa: BLE001 - the provider is the user's code
            self._call("on_error", "token_provider_failed", str(exc))
            return

        def renewed(reply: Any = None) -> None:
            if isinstance(reply, dict) and "error" in reply:
                self._call("on_error", reply["error"].get("code"), reply["error"].get("message"))
                return
            self._token = token
            self._schedule_reauth()

        self._quietly(lambda: sio.emit("reauth", {"token": token}, callback=renewed))

    # -- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _later(delay: float, action: Callable[..., Any], *args: Any) -> None:
        """Run `action(*args)` in `delay` seconds, in a daemon thread."""
        timer = threading.Timer(delay, action, args=args)
        timer.daemon = True
        timer.start()

    def _call(self, name: str, *args: Any) -> None:
        callback = getattr(self, name, None)
        if callback is None:
            return
        try:
            callback(self, *args)
        except Exception:  # noqa: BLE001 - a failing callback must not kill the connection
            log.exception("%s raised", name)

    def _raw(self, event: str, data: Any) -> None:
        if self.on_message is not None:
            self._call("on_message", json.dumps([event, data]), False)

    @staticmethod
    def _quietly(action: Callable[[], Any]) -> None:
        try:
            action()
        except Exception:  # noqa: BLE001 - tearing down a connection that may be gone already
            log.debug("ignored while closing", exc_info=True)
