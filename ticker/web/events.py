"""Socket.IO events: the public client protocol (docs/API.md)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from functools import partial, wraps
from typing import Any

import redis
import sqlalchemy.exc
from flask import current_app, request
from flask_socketio import ConnectionRefusedError

from ticker import metrics
from ticker.bus import assignment
from ticker.bus.connection import PoolExhausted
from ticker.clock import now_iso
from ticker.extensions import socketio
from ticker.registry.tokens import OPERATORS_ROOM
from ticker.web import after_connect, auth, errors
from ticker.web.admission import Busy
from ticker.web.entitlements import exchange_of, metric_label, rejection
from ticker.web.errors import ClientError
from ticker.web.http_errors import DATABASE_DOWN
from ticker.web.limits import client_address
from ticker.web.origins import refused_origin
from ticker.web.replica import Client, replica
from ticker.web.requests import parse_reauth, parse_subscribe, parse_unsubscribe
from ticker.web.wire import raw_socket

log = logging.getLogger(__name__)


def _limits() -> dict[str, Any]:
    config = current_app.config
    return {
        "max_tokens_per_connection": config["MAX_TOKENS_PER_CONNECTION"],
        "max_tokens_per_request": config["MAX_TOKENS_PER_REQUEST"],
        "max_messages_per_sec": config["MAX_MESSAGES_PER_SEC"],
        "max_connections_per_user": config["MAX_CONNECTIONS_PER_USER"],
        "slow_client_secs": config["SLOW_CLIENT_SECS"],
        "token_expiry_grace_secs": config["TOKEN_EXPIRY_GRACE_SECS"],
        "token_leeway_secs": config["JWT_DECODE_LEEWAY"],
        "max_connection_secs": config["MAX_CONNECTION_SECS"],
    }


@socketio.on("connect")
def on_connect(auth_data: Any = None) -> dict | None:
    if _sent_by_client("connect"):
        return on_unknown("connect")
    state = replica()
    address = client_address(request.environ, current_app.config["TRUSTED_PROXY_COUNT"])
    origin = refused_origin(request.environ)
    if origin is not None:
        exc = state.refusal(errors.ORIGIN_NOT_ALLOWED, "pages of this origin may not connect (CORS_ALLOWED_ORIGINS)")
        log.warning("refused connection from origin %s (address %s): %s", origin[:200], address, exc.code)
        raise ConnectionRefusedError(exc.message, exc.as_dict())
    try:
        state.check_address(address)
        with state.gate.turn("connect"):
            claims = auth.verify(auth.bearer_token(auth_data, request.args, request.headers))
            eio_sid = socketio.server.manager.eio_sid_from_sid(request.sid, "/")
            client = state.admit(request.sid, eio_sid, claims, raw_socket(request.environ))
    except Busy:
        exc = state.refusal(errors.SERVER_BUSY, "the server is busy; retry in a moment")
        raise ConnectionRefusedError(exc.message, exc.as_dict()) from None
    except ClientError as exc:
        if exc.code.startswith(("auth_", "token_")):
            state.refusal(exc.code, exc.message)  # counted like the limits' refusals
        log.info("refused connection from %s: %s", address, exc.code)
        # Socket.IO delivers this as connect_error: err.message, and err.data = {code, message}.
        raise ConnectionRefusedError(exc.message, exc.as_dict()) from None
    if claims.get("admin") is True:
        socketio.server.enter_room(request.sid, OPERATORS_ROOM, namespace="/")  # control messages (docs/API.md)
    log.info("connected %s user=%s", request.sid, client.user)
    hello = {"connection_id": request.sid, "user": client.user, "server_time": now_iso(), "limits": _limits()}
    after_connect.defer(eio_sid, partial(state.send, request.sid, "connected", hello))  # after CONNECT (docs/API.md)


@socketio.on("disconnect")
def on_disconnect(*_: Any) -> dict | None:
    if _sent_by_client("disconnect"):
        return on_unknown("disconnect")
    state = replica()
    with state.gate.turn("disconnect", shed=False):  # a departing client is never refused
        client = state.release(request.sid)
    if client is not None:
        log.info("disconnected %s user=%s", request.sid, client.user)
    return None


def _sent_by_client(name: str) -> bool:
    """Whether this `connect` or `disconnect` is an event a client sent under that name, which
    python-socketio hands to the lifecycle handler: run, it would admit the connection again
    (counting its user twice and orphaning its subscriptions' demand) or release one that stays
    open. A real connect carries the connection's WSGI environ (Flask-SocketIO's `request.event`
    args), which no client payload can be; a real disconnect runs once the connection is no
    longer counted as connected. Relies on python-socketio 5.18 passing the environ first to the
    connect handler and dropping the connection before the disconnect handler, as Flask-SocketIO
    5.7 relays them (tests/web/test_bad_messages.py holds it to that)."""
    if name == "connect":
        args = request.event["args"]
        return not args or args[0] is not request.environ
    return socketio.server.manager.is_connected(request.sid, "/")


def client_event(name: str) -> Callable:
    """Register a handler of a client message: it gets the Client and the payload; rate
    limits and ClientErrors become `error` events (and the ack), never a disconnect."""

    def register(handler: Callable[[Client, Any], dict]) -> Callable:
        @wraps(handler)
        def handle(*args: Any) -> dict | None:
            client = replica().clients.get(request.sid)
            if client is None:
                return None  # being disconnected
            if not client.messages.allow():
                return _error(ClientError(errors.RATE_LIMITED, "too many messages a second; this one was ignored"))
            try:
                with replica().gate.turn(name):
                    return handler(client, args[0] if args else None)
            except Busy:
                return _error(ClientError(errors.SERVER_BUSY, "the server is busy: retry in a moment"))
            except ClientError as exc:
                return _error(exc)
            except (PoolExhausted, sqlalchemy.exc.TimeoutError):
                metrics.REQUESTS_SHED.labels(kind=name).inc()
                return _error(ClientError(errors.SERVER_BUSY, "the server is busy: retry in a moment"))
            except DATABASE_DOWN as exc:
                log.warning("%s from %s: database unavailable: %s", name, request.sid, exc)
                return _error(ClientError(errors.DATABASE_UNAVAILABLE, "the server cannot reach its database: retry "
                                                                       "in a moment; your subscriptions are kept"))
            except redis.RedisError as exc:
                log.warning("%s from %s: Redis unavailable: %s", name, request.sid, exc)
                return _error(ClientError(errors.BUS_UNAVAILABLE, "the server cannot reach its data bus: retry in a "
                                                                  "moment; your subscriptions are kept"))

        socketio.on(name)(handle)
        return handle

    return register


@client_event("subscribe")
def on_subscribe(client: Client, data: Any) -> dict:
    config = current_app.config
    # Live candles come from the builder, which reads the single-Redis tick bus only: on a
    # cluster bus (TICK_BUS_URL) no interval is built, and asking for one is refused as such.
    built = () if config.get("TICK_BUS_URL") else config["CANDLE_INTERVALS"]
    wanted = parse_subscribe(data, config["MAX_TOKENS_PER_REQUEST"], built)
    names, rejected = _resolve(client, wanted.instruments, wanted.tokens)
    accepted, refused = _admit(client, wanted.tokens)
    state = replica()
    state.subscribe(client, accepted, wanted.mode, names)
    reply = {"tokens": accepted, "mode": wanted.mode, "total": len(client.subscriptions),
             "rejected": rejected + refused}
    if wanted.candles:
        reply["candles"] = wanted.candles
    _send("subscribed", reply)
    state.tell_if_unavailable(client, accepted)
    state.send_snapshot(client, accepted, wanted.mode)
    state.subscribe_candles(client, accepted, wanted.candles)
    return reply


@client_event("unsubscribe")
def on_unsubscribe(client: Client, data: Any) -> dict:
    tokens = parse_unsubscribe(data, current_app.config["MAX_TOKENS_PER_CONNECTION"])
    removed = [t for t in tokens if t in client.subscriptions]
    replica().unsubscribe(client, removed)
    reply = {"tokens": removed, "total": len(client.subscriptions)}
    _send("unsubscribed", reply)
    return reply


@client_event("ping")
def on_ping(client: Client, _data: Any) -> dict:
    reply = {"server_time": now_iso()}
    _send("pong", reply)
    return reply


@client_event("reauth")
def on_reauth(client: Client, data: Any) -> dict:
    """A fresh JWT on the open connection, before (or within the grace after) the old one expires."""
    claims = auth.verify(parse_reauth(data))
    replica().reauth(client, claims)
    expires_at = client.expires_at  # inf for a token without `exp` (JWT_REQUIRE_EXP=false)
    reply = {"user": client.user, "expires_at": int(expires_at) if math.isfinite(expires_at) else None}
    _send("reauthed", reply)
    return reply


def name_literal_star_events(server: Any) -> None:
    """python-socketio hands an event literally named `*` to the catch-all handler without its
    name, and Flask-SocketIO then takes its payload for the session id (the client's ack was
    `('', 400)`). Give that event its name, as every other unknown event has."""
    find = server._get_event_handler

    def get_event_handler(event: Any, namespace: str, args: tuple) -> tuple:
        handler, args = find(event, namespace, args)
        if event == "*" and handler is not None and handler is server.handlers.get(namespace, {}).get("*"):
            args = (event, *args)
        return handler, args

    server._get_event_handler = get_event_handler


@socketio.on("*")
def on_unknown(event: Any, *_: Any) -> dict | None:
    client = replica().clients.get(request.sid)
    if client is None:
        return None
    if not client.messages.allow():
        return _error(ClientError(errors.RATE_LIMITED, "too many messages a second; this one was ignored"))
    return _error(ClientError(errors.UNKNOWN_EVENT, f"unknown event {str(event)[:40]!r}"))


@socketio.on_error_default
def on_failure(exc: Exception) -> dict:
    log.exception("handler failed for %s: %s", request.sid, exc)
    return _error(ClientError(errors.INTERNAL, "the server could not handle this message"))


def _send(event: str, data: Any) -> None:
    replica().send(request.sid, event, data)


def _error(exc: ClientError) -> dict:
    _send("error", exc.as_dict())
    return {"error": exc.as_dict()}


def _rejection(token: int | str, code: str, message: str) -> dict:
    return {"token": token, "code": code, "message": message}


def _resolve(client: Client, instruments: list[str], tokens: list[int]) -> tuple[dict[int, str], list[dict]]:
    """Add the tokens of instruments named by symbol to `tokens`; returns token -> name for
    them (so they follow a renumbering) and the rejections of unknown names and of names on
    exchanges the client is not entitled to (which are not even looked up)."""
    names, rejected = {}, []
    refused = [name for name in instruments if not client.entitlements.allows(exchange_of(name))]
    for name in refused:
        rejected.append(_not_entitled(name, exchange_of(name)))
    instruments = [name for name in instruments if name not in refused]
    if not instruments:
        return names, rejected
    for name, token in zip(instruments, replica().registry.resolve(instruments), strict=True):
        if token is None:
            rejected.append(_rejection(name, errors.UNKNOWN_INSTRUMENT, f"no instrument {name}"))
            continue
        names[token] = name
        if token not in tokens:
            tokens.append(token)
    return names, rejected


def _not_entitled(token: int | str, exchange: str) -> dict:
    metrics.ENTITLEMENT_REFUSALS.labels(exchange=metric_label(exchange), event="subscribe").inc()
    return rejection(token, exchange)


def _admit(client: Client, tokens: list[int]) -> tuple[list[int], list[dict]]:
    """Split the request into accepted tokens and per-token rejections with codes."""
    # The registry's one lookup says both whether a token exists and its exchange.
    exchanges = replica().registry.exchanges(tokens) if tokens else []
    entitled = {t for t, exchange in zip(tokens, exchanges, strict=True)
                if exchange is not None and client.entitlements.allows(exchange)}
    # Kite's connections hold so many instruments in all: beyond that, say so now.
    upstream = assignment.admissible(replica().redis, [t for t in tokens if t in entitled
                                                       and t not in client.subscriptions])
    accepted, rejected = [], []
    room = current_app.config["MAX_TOKENS_PER_CONNECTION"] - len(client.subscriptions)
    for token, exchange in zip(tokens, exchanges, strict=True):
        is_new = token not in client.subscriptions
        if exchange is None:
            rejected.append(_rejection(token, errors.UNKNOWN_TOKEN, f"no instrument with token {token}"))
        elif token not in entitled:
            rejected.append(_not_entitled(token, exchange))
        elif is_new and room <= 0:
            rejected.append(_rejection(token, errors.LIMIT_EXCEEDED, "connection holds its maximum of tokens"))
        elif is_new and token not in upstream:
            rejected.append(_rejection(token, errors.CAPACITY_EXHAUSTED,
                                       "every Kite connection is full: no room upstream for this instrument"))
        else:
            room -= is_new
            accepted.append(token)
    return accepted, rejected
